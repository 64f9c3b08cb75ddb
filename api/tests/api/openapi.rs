//! The OpenAPI document against the router that serves it: `/openapi.json` answers the document,
//! every documented operation reaches a handler (never the unknown-path fallback nor a 405), and
//! every method a documented path does not list is refused with 405, so nothing is served that
//! the document does not say.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

use super::{Api, services_available};

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "patch", "head", "options"];

/// `path` with each `{param}` filled in.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|part| {
            if part.starts_with('{') {
                "openapi-probe"
            } else {
                part
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn answer(api: &Api, method: &str, path: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .method(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap())
        .uri(path)
        .body(Body::empty())
        .unwrap();
    let response = api.router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 22)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_is_served() {
    if !services_available() {
        return;
    }
    let api = Api::new().await;
    let (status, body) = answer(&api, "get", "/openapi.json").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let served: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(served["openapi"], "3.1.0");
    assert_eq!(
        served,
        serde_json::to_value(carga_api::openapi::document()).unwrap()
    );

    let paths = served["paths"].as_object().unwrap();
    let mut checked = 0;
    for (path, item) in paths {
        let documented: Vec<&str> = METHODS
            .into_iter()
            .filter(|m| item.get(*m).is_some())
            .collect();
        let uri = concrete(path);
        for method in METHODS {
            let (status, body) = answer(&api, method, &uri).await;
            let fallback = status == StatusCode::NOT_FOUND && body.contains("no such endpoint");
            // axum answers HEAD with the GET handler (the body dropped).
            let served_by_get = method == "head" && documented.contains(&"get");
            if documented.contains(&method) || served_by_get {
                assert!(
                    status != StatusCode::METHOD_NOT_ALLOWED && !fallback,
                    "documented {method} {path} is not served: {status} {body}"
                );
                checked += 1;
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is served but not documented: {body}"
                );
            }
        }
    }
    assert!(checked >= 40, "only {checked} operations checked");

    // A path the document does not have is the fallback's problem.
    let (status, body) = answer(&api, "get", "/not/documented").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("no such endpoint"), "{body}");
}
