//! The headless Service (stable member DNS names) and the client Services, which route on the role and
//! load-balance labels the sidecars put on their own pods.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Service, ServicePort, ServiceSpec},
    apimachinery::pkg::util::intstr::IntOrString,
};
use pgpilot_crds::contract::{
    self, BALANCED, LABEL_LOAD_BALANCE, LABEL_ROLE, PG_PORT, REST_PORT, ROLE_PRIMARY, ROLE_REPLICA,
};

use super::{meta, selector_labels};
use crate::validate::ValidatedCluster;

/// One client Service: its name's suffix, the role it selects (`None`: any member), and whether it
/// leaves out members tagged `noLoadBalance` (read traffic only).
pub struct ClientService {
    pub suffix: &'static str,
    pub role: Option<&'static str>,
    pub balanced_only: bool,
}

/// `-rw` (the primary, tags or not), `-ro` (replicas), `-r` (any member); the read Services select only
/// members whose sidecar labelled them balanced.
pub const CLIENT_SERVICES: [ClientService; 3] = [
    ClientService {
        suffix: "rw",
        role: Some(ROLE_PRIMARY),
        balanced_only: false,
    },
    ClientService {
        suffix: "ro",
        role: Some(ROLE_REPLICA),
        balanced_only: true,
    },
    ClientService {
        suffix: "r",
        role: None,
        balanced_only: true,
    },
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
        .filter(|svc| enabled(c, svc.suffix))
        .map(|svc| {
            let mut selector: BTreeMap<String, String> = selector_labels(c);
            if let Some(role) = svc.role {
                selector.insert(LABEL_ROLE.into(), role.into());
            }
            if svc.balanced_only {
                selector.insert(LABEL_LOAD_BALANCE.into(), BALANCED.into());
            }
            Service {
                metadata: meta(c, format!("{}-{}", c.name, svc.suffix)),
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
    fn default_services_select_by_role_and_the_read_ones_by_load_balance() {
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
        let sel = |role: Option<&str>, balanced: bool| {
            let mut m = BTreeMap::from([("pgpilot.io/cluster".to_owned(), "pg".to_owned())]);
            if let Some(r) = role {
                m.insert("pgpilot.io/role".into(), r.into());
            }
            if balanced {
                m.insert("pgpilot.io/load-balance".into(), "true".into());
            }
            m
        };
        assert_eq!(
            got,
            vec![
                ("pg-pods".to_owned(), sel(None, false)),
                ("pg-rw".to_owned(), sel(Some("primary"), false)),
                ("pg-ro".to_owned(), sel(Some("replica"), true)),
                ("pg-r".to_owned(), sel(None, true)),
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
