//! The sidecars' identity: a ServiceAccount and a namespaced Role granting only what docs/design.md gives them.

use k8s_openapi::api::{
    core::v1::ServiceAccount,
    rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
};
use pgpilot_crds::contract;

use super::meta;
use crate::validate::ValidatedCluster;

pub fn build_service_account(c: &ValidatedCluster) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(c, contract::service_account_name(&c.name)),
        // The sidecars reach the API with the projected token of this account; nothing else is mounted.
        automount_service_account_token: Some(true),
        ..ServiceAccount::default()
    }
}

fn rule(
    groups: &[&str],
    resources: &[&str],
    verbs: &[&str],
    names: Option<Vec<String>>,
) -> PolicyRule {
    let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        resource_names: names,
        ..PolicyRule::default()
    }
}

/// Leases: only the cluster's own, which they read, watch and write conditionally (no create, no delete:
/// the operator creates it). Pods: read all, patch (their own role label). The ConfigMap: read only.
/// Events: create. Secrets are mounted, not read through the API.
///
/// `resourceNames` also restricts list/watch: a sidecar lists or watches the Lease and the ConfigMap with
/// the field selector `metadata.name=<name>`, which the apiserver authorizes against these names.
pub fn build_role(c: &ValidatedCluster) -> Role {
    let lease = Some(vec![contract::lease_name(&c.name)]);
    let config = Some(vec![contract::config_map_name(&c.name)]);
    Role {
        metadata: meta(c, contract::service_account_name(&c.name)),
        rules: Some(vec![
            rule(
                &["coordination.k8s.io"],
                &["leases"],
                &["get", "list", "watch", "update", "patch"],
                lease,
            ),
            rule(&[""], &["pods"], &["get", "list", "watch", "patch"], None),
            rule(&[""], &["configmaps"], &["get", "list", "watch"], config),
            rule(
                &["", "events.k8s.io"],
                &["events"],
                &["create", "patch"],
                None,
            ),
        ]),
    }
}

pub fn build_role_binding(c: &ValidatedCluster) -> RoleBinding {
    let name = contract::service_account_name(&c.name);
    RoleBinding {
        metadata: meta(c, name.clone()),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: name.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name,
            namespace: Some(c.namespace.clone()),
            ..Subject::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{testutil::example, validate::validate};

    #[test]
    fn role_grants_exactly_the_sidecar_needs() {
        let c = validate(&example("cluster-3.yaml"), "s").unwrap();
        let rules = build_role(&c).rules.unwrap();
        let summary: Vec<String> = rules
            .iter()
            .map(|r| {
                format!(
                    "{:?} {:?} {:?} {:?}",
                    r.api_groups.as_deref().unwrap_or_default(),
                    r.resources.as_deref().unwrap_or_default(),
                    r.verbs,
                    r.resource_names.as_deref().unwrap_or_default()
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                r#"["coordination.k8s.io"] ["leases"] ["get", "list", "watch", "update", "patch"] ["pg-leader"]"#,
                r#"[""] ["pods"] ["get", "list", "watch", "patch"] []"#,
                r#"[""] ["configmaps"] ["get", "list", "watch"] ["pg-config"]"#,
                r#"["", "events.k8s.io"] ["events"] ["create", "patch"] []"#,
            ]
        );
        assert!(
            !rules.iter().any(|r| r
                .resources
                .as_deref()
                .unwrap_or_default()
                .contains(&"secrets".to_owned())),
            "secrets are mounted, never read through the API"
        );
    }

    #[test]
    fn binding_ties_the_role_to_the_sidecar_account() {
        let c = validate(&example("cluster-3.yaml"), "s").unwrap();
        let b = build_role_binding(&c);
        assert_eq!(b.role_ref.name, "pg-sidecar");
        assert_eq!(b.role_ref.kind, "Role");
        let s = &b.subjects.unwrap()[0];
        assert_eq!(
            (s.kind.as_str(), s.name.as_str(), s.namespace.as_deref()),
            ("ServiceAccount", "pg-sidecar", Some("db"))
        );
        assert_eq!(
            build_service_account(&c).metadata.name.as_deref(),
            Some("pg-sidecar")
        );
    }
}
