//! Prints the `PostgresCluster` CRD as YAML. `make crd` commits it under `charts/pgpilot/crds/`;
//! `make crd-check` fails when the committed file drifts from the Rust types.

use kube::CustomResourceExt;
use pgpilot_crds::PostgresCluster;

fn main() -> Result<(), yaml_serde::Error> {
    print!("{}", yaml_serde::to_string(&PostgresCluster::crd())?);
    Ok(())
}
