//! DataFusion inside Carga: the session every query runs in (a memory limit from the settings,
//! Carga's Parquet encryption), SQL over the committed raw zone (`raw_zone`), and SQL transforms
//! applied to a source as it streams (`transform`).

mod encryption;
pub mod raw_zone;
pub(crate) mod transform;

pub use transform::SqlDialect;

use std::sync::Arc;

use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::encryption::Encryptor;
use crate::error::JobError;

pub use encryption::ENCRYPTION_FACTORY_ID;

/// A session with the memory pool bounded to `memory_mib` and Carga's key provider registered
/// for Parquet decryption (`ENCRYPTION_FACTORY_ID`).
pub fn session(
    encryptor: Option<&Encryptor>,
    memory_mib: usize,
) -> Result<SessionContext, JobError> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(memory_mib.max(16) << 20)))
        .build_arc()
        .map_err(|e| query_error("starting the query engine", e))?;
    let config = SessionConfig::new()
        .with_information_schema(true)
        .with_batch_size(8192);
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    if let Some(encryptor) = encryptor {
        ctx.runtime_env().register_parquet_encryption_factory(
            ENCRYPTION_FACTORY_ID,
            Arc::new(encryption::CargaEncryption::new(encryptor.clone())),
        );
    }
    Ok(ctx)
}

/// A DataFusion error as Carga's: an error that started in Carga (a source's, carried through
/// the plan) comes back as it was; anything else is a query error (validation: the SQL or the
/// data it met is wrong).
pub fn query_error(context: &str, error: DataFusionError) -> JobError {
    let mut current: &DataFusionError = &error;
    loop {
        match current {
            DataFusionError::Context(_, inner) => current = inner,
            DataFusionError::Shared(inner) => current = inner,
            DataFusionError::External(inner) => {
                if let Some(job) = inner.downcast_ref::<JobError>() {
                    return job_error_copy(job);
                }
                break;
            }
            _ => break,
        }
    }
    JobError::Query {
        context: context.to_owned(),
        message: error.strip_backtrace(),
    }
}

/// A failed run plan as Carga's error: one of Carga's own (a source's, a step's, the writer's)
/// comes back by value, anything else is the transform's query error.
pub(crate) fn plan_error(error: DataFusionError) -> JobError {
    match error {
        DataFusionError::External(inner) => match inner.downcast::<JobError>() {
            Ok(job) => *job,
            Err(other) => query_error("transform", DataFusionError::External(other)),
        },
        DataFusionError::Context(context, inner) => match *inner {
            DataFusionError::External(e) if e.is::<JobError>() => {
                plan_error(DataFusionError::External(e))
            }
            other => query_error(
                "transform",
                DataFusionError::Context(context, Box::new(other)),
            ),
        },
        other => query_error("transform", other),
    }
}

/// A source error carried through DataFusion comes back by value: rebuilt from its parts where
/// it matters which kind it is (transient or not), as text otherwise.
fn job_error_copy(error: &JobError) -> JobError {
    match error {
        JobError::BadInput { location, message } => JobError::bad_input(location, message),
        JobError::Database { context, message } => JobError::Database {
            context: context.clone(),
            message: message.clone(),
        },
        JobError::Http { context, message } => JobError::Http {
            context: context.clone(),
            message: message.clone(),
        },
        JobError::Denied { rule, message } => JobError::Denied {
            rule,
            message: message.clone(),
        },
        JobError::Reread {
            column,
            data_type,
            message,
        } => JobError::Reread {
            column: column.clone(),
            data_type: data_type.clone(),
            message: message.clone(),
        },
        other => JobError::Masked {
            message: other.to_string(),
            validation: other.is_validation(),
        },
    }
}
