//! The API's contract: an OpenAPI 3.1 document generated from the handlers' `#[utoipa::path]`
//! annotations and the types they answer with, collected by the same `routes!` calls that put
//! the handlers in the router (so a route cannot be served without being documented), and
//! served at `/openapi.json`.

use std::sync::Arc;

use axum::response::IntoResponse;
use axum::{Extension, Json};
use utoipa::OpenApi;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};

use crate::problem::{self, Problem};

/// The security scheme every endpoint but the public ones requires.
const BEARER: &str = "bearer";

/// Operations anyone may call: the probes, the metrics, this document, the dashboard's page and
/// tus' capability answer. Every other operation takes a bearer token whose role is checked.
const PUBLIC: [&str; 7] = [
    "healthz",
    "readyz",
    "metrics",
    "openapi_json",
    "root",
    "dashboard_page",
    "upload_capabilities",
];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Carga",
        description = "La Bóveda's ingestion engine: datasets, on-demand runs, run history, the \
                       connection store, uploads, SQL over the raw zone and the dashboard's data. \
                       Every error is an RFC 9457 problem document (`application/problem+json`).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    components(schemas(Problem)),
    tags(
        (name = "service", description = "Probes, metrics and this document; no token needed"),
        (name = "datasets", description = "Dataset configuration, approval and on-demand runs"),
        (name = "runs", description = "Run history and the operator's actions on runs"),
        (name = "connections", description = "The write-only connection store"),
        (name = "uploads", description = "File uploads (tus 1.0 and multipart)"),
        (name = "sql", description = "Read-only SQL over the raw zone"),
        (name = "webhooks", description = "Webhook subscriptions and their delivery log"),
        (name = "dashboard", description = "What the dashboard shows"),
    )
)]
pub(crate) struct ApiDoc;

/// The API's OpenAPI document, as `/openapi.json` serves it.
pub fn document() -> utoipa::openapi::OpenApi {
    complete(crate::routes().split_for_parts().1)
}

/// This document, as JSON.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi_json",
    tag = "service",
    responses((status = 200, description = "The API's OpenAPI 3.1 document", content_type = "application/json"))
)]
pub(crate) async fn openapi_json(
    Extension(document): Extension<Arc<utoipa::openapi::OpenApi>>,
) -> axum::response::Response {
    Json(document.as_ref()).into_response()
}

/// What every operation shares, added after the handlers' own annotations: the bearer scheme on
/// every operation that is not public (with its 401 and 403), and the problem document as the
/// answer to any other error.
pub(crate) fn complete(mut document: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let components = document.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API token (`carga-scheduler token create`); its role (viewer, editor, \
                     approver, admin) is checked on every call and every refusal is audited.",
                ))
                .build(),
        ),
    );
    for item in document.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            let public = operation
                .operation_id
                .as_deref()
                .is_some_and(|id| PUBLIC.contains(&id));
            if !public {
                operation.security = Some(vec![SecurityRequirement::new::<_, _, &str>(BEARER, [])]);
                add_problem(operation, "401", "No token, or a token that is not known");
                add_problem(
                    operation,
                    "403",
                    "The token's role may not do this (the refusal is audited)",
                );
            }
            add_problem(
                operation,
                "default",
                "Any other error, as an RFC 9457 problem document",
            );
        }
    }
    document
}

/// A problem answer for `status`, unless the handler documented that status itself.
fn add_problem(operation: &mut Operation, status: &str, description: &str) {
    operation
        .responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| RefOr::T(problem_response(description)));
}

fn problem_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            problem::CONTENT_TYPE,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_and_every_private_operation_takes_a_token() {
        let document = serde_json::to_value(document()).unwrap();
        assert_eq!(document["openapi"], "3.1.0");
        let schemes = &document["components"]["securitySchemes"][BEARER];
        assert_eq!(schemes["scheme"], "bearer", "{schemes}");
        for schema in [
            "Problem",
            "DatasetRecord",
            "RunRecord",
            "RunProgress",
            "QueueStats",
            "AuditRecord",
        ] {
            assert!(
                document["components"]["schemas"][schema].is_object(),
                "no schema {schema}"
            );
        }
        let paths = document["paths"].as_object().unwrap();
        let mut operations = 0;
        for (path, item) in paths {
            for (method, operation) in item.as_object().unwrap() {
                operations += 1;
                let id = operation["operationId"].as_str().unwrap();
                let secured = operation.get("security").is_some();
                assert_eq!(
                    secured,
                    !PUBLIC.contains(&id),
                    "{method} {path} ({id}): security"
                );
                let default = &operation["responses"]["default"]["content"][problem::CONTENT_TYPE]
                    ["schema"]["$ref"];
                assert_eq!(
                    default,
                    &Value::from("#/components/schemas/Problem"),
                    "{method} {path}: errors are problems"
                );
                assert!(
                    operation["tags"].as_array().is_some_and(|t| !t.is_empty()),
                    "{method} {path}: no tag"
                );
            }
        }
        assert!(operations >= 40, "only {operations} operations documented");
    }

    /// `docs/openapi.json` is the document the API serves (regenerate it with
    /// `CARGA_UPDATE_OPENAPI=1 cargo test --workspace --lib openapi`).
    #[test]
    fn the_committed_document_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let current = serde_json::to_string_pretty(&document()).unwrap() + "\n";
        if std::env::var_os("CARGA_UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &current).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == current,
            "docs/openapi.json is not the served document: CARGA_UPDATE_OPENAPI=1 cargo test --workspace --lib openapi"
        );
    }

    /// Routes reach the router only through `routes!` (which documents them): no module adds one
    /// with axum's own methods, which would serve it undocumented.
    #[test]
    fn no_route_bypasses_the_document() {
        let forbidden =
            [".route", ".route_service", ".nest", ".nest_service"].map(|m| m.to_owned() + "(");
        let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&source).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                if forbidden.iter().any(|f| code.contains(f.as_str())) {
                    found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                }
            }
        }
        assert!(found.is_empty(), "routes outside routes!: {found:#?}");
    }
}
