use crate::common::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn org_lifecycle_smoke() {
    let app = TestApp::spawn().await;
    let ann = app.user("ann@example.com");
    let bob = app.user("bob@example.com");
    let org = app.create_org(&ann, "Acme Corp").await;
    app.add_member(org, &ann, &bob, "member").await;
    let (s, page) = app.get(&format!("/api/v1/orgs/{org}/members"), &bob).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    let (s, me) = app.get("/api/v1/me/organizations", &bob).await;
    assert_eq!(s, StatusCode::OK, "{me}");
    assert_eq!(me["data"][0]["role"], "member");
    let (s, log) = app
        .get(&format!("/api/v1/orgs/{org}/audit-log"), &ann)
        .await;
    assert_eq!(s, StatusCode::OK, "{log}");
    let (s, _) = app
        .patch(&format!("/api/v1/orgs/{org}"), &bob, json!({"name": "x"}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn docs_and_spec_are_served() {
    let app = TestApp::spawn().await;
    let spec: serde_json::Value = app
        .client
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(spec["paths"]["/api/v1/orgs/{org_id}/members"]["get"].is_object());
    assert!(spec["components"]["schemas"]["Problem"].is_object());
    let docs = app
        .client
        .get(format!("{}/docs/", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("swagger"));
}
