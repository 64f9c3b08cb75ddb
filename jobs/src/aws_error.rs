//! AWS SDK errors as text for our messages: the service's code and message (which name the secret
//! or key, never a value), else the transport's cause. Secrets Manager and KMS share the SDK's
//! error type (both crates re-export the SDK runtime's `SdkError`).

pub(crate) fn sdk_error_text<E, R>(error: &aws_sdk_kms::error::SdkError<E, R>) -> String
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use std::error::Error;
    error
        .as_service_error()
        .map(|s| s.to_string())
        .or_else(|| error.source().map(|s| s.to_string()))
        .unwrap_or_else(|| error.to_string())
}
