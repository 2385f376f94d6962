//! The headless Service (stable member DNS names) and the client Services, which route on the role label
//! the sidecars put on their own pods.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Service, ServicePort, ServiceSpec},
    apimachinery::pkg::util::intstr::IntOrString,
};
use pgpilot_crds::contract::{self, LABEL_ROLE, PG_PORT, REST_PORT, ROLE_PRIMARY, ROLE_REPLICA};

use super::{meta, selector_labels};
use crate::validate::ValidatedCluster;

/// Suffixes of the client Services and the role each selects (`None`: any member).
pub const CLIENT_SERVICES: [(&str, Option<&str>); 3] = [
    ("rw", Some(ROLE_PRIMARY)),
    ("ro", Some(ROLE_REPLICA)),
    ("r", None),
];

fn port(name: &str, port: u16) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: i32::from(port),
        target_port: Some(IntOrString::Int(i32::from(port))),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// Whether the spec asks for the client Service with this suffix.
pub fn enabled(c: &ValidatedCluster, suffix: &str) -> bool {
    let s = &c.spec.services;
    match suffix {
        "rw" => s.rw,
        "ro" => s.ro,
        "r" => s.r,
        _ => false,
    }
}

/// The headless `<c>-pods`, then `<c>-rw`, `<c>-ro`, `<c>-r` as enabled.
pub fn build_services(c: &ValidatedCluster) -> Vec<Service> {
    // Not-ready members must resolve too: a replica being cloned needs its peers' names, and the
    // sidecars talk to each other before PostgreSQL is ready.
    let headless = Service {
        metadata: meta(c, contract::headless_service_name(&c.name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(c)),
            ports: Some(vec![port("postgresql", PG_PORT), port("api", REST_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let clients = CLIENT_SERVICES
        .iter()
        .filter(|(suffix, _)| enabled(c, suffix))
        .map(|(suffix, role)| {
            let mut selector: BTreeMap<String, String> = selector_labels(c);
            if let Some(role) = role {
                selector.insert(LABEL_ROLE.into(), (*role).into());
            }
            Service {
                metadata: meta(c, format!("{}-{suffix}", c.name)),
                spec: Some(ServiceSpec {
                    type_: Some(c.spec.services.type_.as_str().into()),
                    selector: Some(selector),
                    ports: Some(vec![port("postgresql", PG_PORT)]),
                    ..ServiceSpec::default()
                }),
                ..Service::default()
            }
        });
    std::iter::once(headless).chain(clients).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{testutil::cluster_from_yaml, validate::validate};

    fn services(spec: &str) -> Vec<Service> {
        build_services(&validate(&cluster_from_yaml(spec), "s").unwrap())
    }

    #[test]
    fn default_services_select_by_role() {
        let svcs = services("instances: 3");
        let got: Vec<(String, BTreeMap<String, String>)> = svcs
            .iter()
            .map(|s| {
                (
                    s.metadata.name.clone().unwrap(),
                    s.spec.clone().unwrap().selector.unwrap(),
                )
            })
            .collect();
        let sel = |role: Option<&str>| {
            let mut m = BTreeMap::from([("pgpilot.io/cluster".to_owned(), "pg".to_owned())]);
            if let Some(r) = role {
                m.insert("pgpilot.io/role".into(), r.into());
            }
            m
        };
        assert_eq!(
            got,
            vec![
                ("pg-pods".to_owned(), sel(None)),
                ("pg-rw".to_owned(), sel(Some("primary"))),
                ("pg-ro".to_owned(), sel(Some("replica"))),
                ("pg-r".to_owned(), sel(None)),
            ]
        );
        let headless = svcs[0].spec.clone().unwrap();
        assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
        assert_eq!(headless.publish_not_ready_addresses, Some(true));
        let ports: Vec<i32> = headless.ports.unwrap().iter().map(|p| p.port).collect();
        assert_eq!(ports, [5432, 8008]);
        assert_eq!(
            svcs[1].spec.clone().unwrap().type_.as_deref(),
            Some("ClusterIP")
        );
    }

    #[test]
    fn disabled_services_are_not_built_and_type_is_applied() {
        let svcs = services("{services: {ro: false, r: false, type: NodePort}}");
        let names: Vec<_> = svcs
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["pg-pods", "pg-rw"]);
        assert_eq!(
            svcs[1].spec.clone().unwrap().type_.as_deref(),
            Some("NodePort")
        );
        assert_eq!(
            svcs[0].spec.clone().unwrap().type_,
            None,
            "the headless Service keeps its type"
        );
    }
}
