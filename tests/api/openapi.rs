//! `GET /openapi.json`: valid OpenAPI 3.1 by a real validator, and complete.

use std::collections::BTreeSet;

use serde_json::Value;
use support::{Backend, spawn_app};

/// Every route of the contract.
const ROUTES: [(&str, &str); 16] = [
    ("post", "/webhooks/replicate"),
    ("get", "/v1/predictions"),
    ("post", "/v1/predictions"),
    ("post", "/v1/models/{owner}/{name}/predictions"),
    ("post", "/v1/deployments/{owner}/{name}/predictions"),
    ("post", "/v1/predictions/{id}/cancel"),
    ("get", "/v1/models/{owner}/{name}/versions/{id}"),
    ("post", "/v1/files"),
    ("get", "/v1/predictions/{id}"),
    ("get", "/v1/predictions/{id}/events"),
    ("get", "/v1/predictions/{id}/deliveries"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/archive/{digest}/{name}"),
];

async fn description(backend: Backend) -> (support::TestApp, Value, String) {
    let app = spawn_app(backend).await;
    let response = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let text = response.text().await.unwrap();
    (app, serde_json::from_str(&text).unwrap(), text)
}

async fn the_description_is_valid_openapi_3_1(backend: Backend) {
    let (_app, doc, text) = description(backend).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let file = std::env::temp_dir().join(format!("inbox-openapi-{}.json", fastrand::u64(..)));
    std::fs::write(&file, text).unwrap();
    let output = std::process::Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("python3 runs the OpenAPI validator");
    std::fs::remove_file(&file).unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !said.contains("No module named"),
        "the OpenAPI validator is not installed: python3 -m pip install -r tests/requirements.txt"
    );
    assert!(output.status.success(), "{said}");
}

async fn every_route_is_described_and_every_described_route_is_served(backend: Backend) {
    let (app, doc, _) = description(backend).await;
    let described: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(described, expected);

    for (method, path) in ROUTES {
        let url = format!("{}{}", app.address, path)
            .replace("{id}", "some-id")
            .replace("{owner}", "acme")
            .replace("{name}", "echo");
        let request = match method {
            "post" => app.client.post(&url),
            _ => app.client.get(&url),
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert!(
            status != 405 && !body.contains("there is no such route"),
            "{method} {path} is not served"
        );
    }
}

async fn headers_and_problems_are_described(backend: Backend) {
    let (_app, doc, _) = description(backend).await;
    let parameters = |method: &str, path: &str| -> Vec<String> {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        format!(
                            "{} {}",
                            p["in"].as_str().unwrap(),
                            p["name"].as_str().unwrap()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    for header in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        assert!(
            parameters("post", "/webhooks/replicate").contains(&format!("header {header}")),
            "{header}"
        );
    }
    assert!(parameters("get", "/v1/predictions/{id}").contains(&"header Prefer".to_owned()));
    for query in [
        "status",
        "model",
        "version",
        "created_after",
        "created_before",
        "limit",
        "cursor",
    ] {
        assert!(
            parameters("get", "/v1/predictions").contains(&format!("query {query}")),
            "{query}"
        );
    }
    // A receipt's status is one of the store's outcomes, by their one spelling.
    let receipt = &doc["components"]["schemas"]["Receipt"]["properties"]["status"];
    let outcome = match receipt["$ref"].as_str() {
        Some(reference) => {
            let name = reference.trim_start_matches("#/components/schemas/");
            doc["components"]["schemas"][name].clone()
        }
        None => receipt.clone(),
    };
    assert_eq!(
        outcome["enum"],
        serde_json::json!(["applied", "ignored", "duplicate"]),
        "{receipt}"
    );
    // The formats the service enforces are the ones the document declares.
    let list = doc["paths"]["/v1/predictions"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let schema = |name: &str| {
        list.iter()
            .find(|p| p["name"] == name)
            .map(|p| p["schema"].clone())
            .unwrap()
    };
    for time in ["created_after", "created_before"] {
        assert_eq!(schema(time)["format"], "date-time", "{time}");
    }
    let limit = schema("limit");
    assert_eq!(
        (&limit["type"], &limit["minimum"], &limit["maximum"]),
        (&"integer".into(), &1.into(), &1000.into())
    );
    let not_found = &doc["paths"]["/v1/predictions/{id}"]["get"]["responses"]["404"]["content"];
    assert!(
        not_found["application/problem+json"]["schema"]["$ref"]
            .as_str()
            .unwrap()
            .ends_with("/Problem")
    );
    let applied = &doc["paths"]["/v1/predictions/{id}"]["get"]["responses"]["200"]["headers"];
    assert!(applied.get("Preference-Applied").is_some());
    assert!(doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer");
}

support::on_each_backend!(
    the_description_is_valid_openapi_3_1,
    every_route_is_described_and_every_described_route_is_served,
    headers_and_problems_are_described,
);
