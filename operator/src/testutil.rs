//! Test fixtures: `PostgresCluster` objects from YAML, as the apiserver would hand them to the operator.

use pgpilot_crds::PostgresCluster;

/// A cluster `db/pg` (uid, generation 1) whose spec is `spec_yaml`, defaults filled in by serde as the
/// apiserver's schema defaults would.
pub fn cluster_from_yaml(spec_yaml: &str) -> PostgresCluster {
    let spec: yaml_serde::Value = yaml_serde::from_str(spec_yaml).expect("spec YAML");
    let doc = serde_json::json!({
        "apiVersion": "pgpilot.io/v1alpha1",
        "kind": "PostgresCluster",
        "metadata": {"name": "pg", "namespace": "db", "uid": "8d1c5b4e-0000-4000-8000-000000000001", "generation": 1},
        "spec": spec,
    });
    serde_json::from_value(doc).expect("a PostgresCluster")
}

/// A file under `examples/`, with the metadata the apiserver adds.
pub fn example(file: &str) -> PostgresCluster {
    let path = format!("{}/../examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("example file");
    let mut c: PostgresCluster =
        yaml_serde::from_str(&text).expect("example parses as a PostgresCluster");
    c.metadata.namespace = Some("db".into());
    c.metadata.uid = Some("8d1c5b4e-0000-4000-8000-000000000002".into());
    c.metadata.generation = Some(1);
    c
}
