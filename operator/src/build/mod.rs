//! Step 2 of the reconcile: build the children of a cluster. Pure functions, no IO.
//!
//! Reads a [`ValidatedCluster`]; returns the objects to server-side apply ([`Children`]) and, separately,
//! the Secrets to create when absent ([`secrets`]). Every object carries the cluster's labels and a
//! controller owner reference, so deleting the cluster garbage-collects it.

pub mod rbac;
pub mod secrets;
pub mod services;
pub mod statefulset;

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        coordination::v1::{Lease, LeaseSpec},
        core::v1::{ConfigMap, Service, ServiceAccount},
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use pgpilot_crds::contract::{self, CONFIG_KEY, LABEL_CLUSTER, LABEL_MANAGED_BY, MANAGED_BY};

use crate::validate::ValidatedCluster;

/// Every child but the Secrets, in the order [`crate::apply`] applies it (the Lease only created).
#[derive(Clone, Debug)]
pub struct Children {
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub config_map: ConfigMap,
    pub lease: Lease,
    /// The headless Service first, then the enabled client Services.
    pub services: Vec<Service>,
    pub pdb: PodDisruptionBudget,
    pub statefulset: StatefulSet,
}

/// One child of a [`Children`] bundle, borrowed.
#[derive(Clone, Copy, Debug)]
pub enum Child<'a> {
    ServiceAccount(&'a ServiceAccount),
    Role(&'a Role),
    RoleBinding(&'a RoleBinding),
    ConfigMap(&'a ConfigMap),
    Lease(&'a Lease),
    Service(&'a Service),
    Pdb(&'a PodDisruptionBudget),
    StatefulSet(&'a StatefulSet),
}

impl Children {
    /// Every child in dependency order: RBAC → ConfigMap → Lease → Services → PDB → StatefulSet last, so a
    /// pod never starts before what it mounts and reads exists. The one place the bundle is taken apart,
    /// without `..`: a new field does not compile until it has its place here, and the apply, the
    /// fingerprint and the "is a child missing" check all walk this list.
    pub fn in_apply_order(&self) -> Vec<Child<'_>> {
        let Self {
            service_account,
            role,
            role_binding,
            config_map,
            lease,
            services,
            pdb,
            statefulset,
        } = self;
        let mut order = vec![
            Child::ServiceAccount(service_account),
            Child::Role(role),
            Child::RoleBinding(role_binding),
            Child::ConfigMap(config_map),
            Child::Lease(lease),
        ];
        order.extend(services.iter().map(Child::Service));
        order.push(Child::Pdb(pdb));
        order.push(Child::StatefulSet(statefulset));
        order
    }
}

impl Child<'_> {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ServiceAccount(_) => "ServiceAccount",
            Self::Role(_) => "Role",
            Self::RoleBinding(_) => "RoleBinding",
            Self::ConfigMap(_) => "ConfigMap",
            Self::Lease(_) => "Lease",
            Self::Service(_) => "Service",
            Self::Pdb(_) => "PodDisruptionBudget",
            Self::StatefulSet(_) => "StatefulSet",
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Self::ServiceAccount(o) => &o.metadata,
            Self::Role(o) => &o.metadata,
            Self::RoleBinding(o) => &o.metadata,
            Self::ConfigMap(o) => &o.metadata,
            Self::Lease(o) => &o.metadata,
            Self::Service(o) => &o.metadata,
            Self::Pdb(o) => &o.metadata,
            Self::StatefulSet(o) => &o.metadata,
        }
    }

    /// The object as JSON, for [`crate::apply::fingerprint`].
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        match self {
            Self::ServiceAccount(o) => serde_json::to_vec(o),
            Self::Role(o) => serde_json::to_vec(o),
            Self::RoleBinding(o) => serde_json::to_vec(o),
            Self::ConfigMap(o) => serde_json::to_vec(o),
            Self::Lease(o) => serde_json::to_vec(o),
            Self::Service(o) => serde_json::to_vec(o),
            Self::Pdb(o) => serde_json::to_vec(o),
            Self::StatefulSet(o) => serde_json::to_vec(o),
        }
    }
}

/// Builds every child. `system_identifier`: the cluster's, from `status.systemIdentifier`, for a Lease
/// that has to be created again.
/// `replicas`: the StatefulSet's size now, as the scale-down step allows ([`crate::scale`]).
pub fn build_children(
    c: &ValidatedCluster,
    system_identifier: Option<&str>,
    replicas: i32,
) -> Result<Children, serde_json::Error> {
    Ok(Children {
        service_account: rbac::build_service_account(c),
        role: rbac::build_role(c),
        role_binding: rbac::build_role_binding(c),
        config_map: build_config_map(c)?,
        lease: build_lease(c, system_identifier),
        services: services::build_services(c),
        pdb: build_pdb(c),
        statefulset: statefulset::build_statefulset(c, replicas),
    })
}

/// Labels on every child: which cluster it belongs to and who manages it.
pub fn labels(c: &ValidatedCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_CLUSTER.to_owned(), c.name.clone()),
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
        ("app.kubernetes.io/name".to_owned(), "postgresql".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), c.name.clone()),
    ])
}

/// The label selector matching the cluster's member pods (immutable in the StatefulSet: keep it minimal).
pub fn selector_labels(c: &ValidatedCluster) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_CLUSTER.to_owned(), c.name.clone())])
}

/// Metadata of a child named `name`: namespace, labels, owner reference.
pub fn meta(c: &ValidatedCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(c.namespace.clone()),
        labels: Some(labels(c)),
        owner_references: Some(vec![c.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// The ConfigMap the sidecars read their [`contract::SidecarConfig`] from.
pub fn build_config_map(c: &ValidatedCluster) -> Result<ConfigMap, serde_json::Error> {
    let json = serde_json::to_string_pretty(&c.sidecar_config)?;
    Ok(ConfigMap {
        metadata: meta(c, contract::config_map_name(&c.name)),
        data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), json)])),
        ..ConfigMap::default()
    })
}

/// The election Lease, as the operator creates it when it is missing: no holder, the spec's
/// `leaseDurationSeconds`, and the cluster's system identifier when the status knows it.
///
/// Created, never applied: from then on the sidecars own the record (holderIdentity, renewTime,
/// acquireTime, leaseTransitions, leaseDurationSeconds and the `pgpilot.io/*` annotations), each write a
/// replace conditional on the resourceVersion it read (docs/design.md L1). The duration in the record is the
/// holder's own, which its peers expire it by; if the operator set it from the spec, a changed spec would
/// tell the peers a duration the holder does not run with yet, and every operator write would make the
/// holder's next renewal fail with a conflict. A spec change reaches the sidecars through the ConfigMap.
///
/// A Lease recreated after it was deleted (by hand, by a restore) carries
/// [`contract::ANNOTATION_SYSTEM_ID`], so it cannot look like the Lease of a cluster that was never
/// initialised and make a member with an empty data directory run `initdb` (issue 13, hole 4).
pub fn build_lease(c: &ValidatedCluster, system_identifier: Option<&str>) -> Lease {
    let mut metadata = meta(c, contract::lease_name(&c.name));
    if let Some(id) = system_identifier {
        metadata.annotations = Some(BTreeMap::from([(
            contract::ANNOTATION_SYSTEM_ID.to_owned(),
            id.to_owned(),
        )]));
    }
    Lease {
        metadata,
        spec: Some(LeaseSpec {
            lease_duration_seconds: Some(c.spec.ha.lease_duration_seconds),
            ..LeaseSpec::default()
        }),
    }
}

/// One voluntary disruption (drain, eviction) at a time.
pub fn build_pdb(c: &ValidatedCluster) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(c, c.name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(c)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

#[cfg(test)]
mod tests {
    use pgpilot_crds::contract::SidecarConfig;

    use super::*;
    use crate::{testutil::example, validate::validate};

    fn three() -> ValidatedCluster {
        validate(&example("cluster-3.yaml"), "sidecar:t").unwrap()
    }

    #[test]
    fn every_child_is_owned_by_the_cluster_and_labelled() {
        let c = three();
        let ch = build_children(&c, None, c.spec.instances).unwrap();
        for child in ch.in_apply_order() {
            let m = child.meta().clone();
            let owners = m.owner_references.unwrap();
            assert_eq!(owners.len(), 1, "{:?}", m.name);
            assert_eq!(owners[0].name, "pg");
            assert_eq!(owners[0].controller, Some(true));
            assert_eq!(m.namespace.as_deref(), Some("db"));
            assert_eq!(m.labels.unwrap()[LABEL_CLUSTER], "pg");
        }
    }

    #[test]
    fn children_are_applied_in_dependency_order() {
        let ch = build_children(&three(), None, 3).unwrap();
        let order: Vec<String> = ch
            .in_apply_order()
            .iter()
            .map(|c| format!("{} {}", c.kind(), c.meta().name.as_deref().unwrap()))
            .collect();
        assert_eq!(
            order,
            [
                "ServiceAccount pg-sidecar",
                "Role pg-sidecar",
                "RoleBinding pg-sidecar",
                "ConfigMap pg-config",
                "Lease pg-leader",
                "Service pg-pods",
                "Service pg-rw",
                "Service pg-ro",
                "Service pg-r",
                "PodDisruptionBudget pg",
                "StatefulSet pg",
            ]
        );
    }

    #[test]
    fn config_map_holds_the_sidecar_config() {
        let c = three();
        let cm = build_config_map(&c).unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("pg-config"));
        let parsed: SidecarConfig = serde_json::from_str(&cm.data.unwrap()[CONFIG_KEY]).unwrap();
        assert_eq!(parsed, c.sidecar_config);
    }

    #[test]
    fn lease_carries_only_the_duration() {
        let mut c = three();
        c.spec.ha.lease_duration_seconds = 21;
        let lease = build_lease(&c, None);
        assert_eq!(lease.metadata.name.as_deref(), Some("pg-leader"));
        assert_eq!(lease.metadata.annotations, None);
        let spec = serde_json::to_value(lease.spec.unwrap()).unwrap();
        assert_eq!(
            spec,
            serde_json::json!({"leaseDurationSeconds": 21}),
            "no holder, no times, no transitions"
        );
    }

    /// Issue 13, hole 4: a Lease the operator creates again says the cluster has data.
    #[test]
    fn a_recreated_lease_carries_the_known_system_identifier() {
        let lease = build_lease(&three(), Some("7412345678901234567"));
        let annotations = lease.metadata.annotations.unwrap();
        assert_eq!(
            annotations[contract::ANNOTATION_SYSTEM_ID],
            "7412345678901234567"
        );
        assert_eq!(annotations.len(), 1);
        assert_eq!(
            lease.spec.unwrap().holder_identity,
            None,
            "still no holder: the sidecars elect one"
        );
    }

    #[test]
    fn pdb_allows_one_member_down() {
        let pdb = build_pdb(&three()).spec.unwrap();
        assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
        assert_eq!(
            pdb.selector.unwrap().match_labels.unwrap()[LABEL_CLUSTER],
            "pg"
        );
    }
}
