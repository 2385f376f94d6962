//! The sidecar's configuration: identity from the environment the StatefulSet sets (contract.rs), and
//! the cluster's [`SidecarConfig`] from its ConfigMap, watched and published on a `watch` channel.
//!
//! IO: reads the ConfigMap through the API (get/watch by name only, as the Role allows).

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use pgpilot_crds::contract::{CONFIG_KEY, SidecarConfig, config_map_name};
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("ConfigMap {name} has no key {CONFIG_KEY}")]
    MissingKey { name: String },
    #[error("ConfigMap {name}: invalid {CONFIG_KEY}: {source}")]
    Invalid {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the ConfigMap watch ended before the first configuration arrived")]
    WatchEnded,
}

impl ConfigError {
    pub fn category(&self) -> &'static str {
        match self {
            ConfigError::MissingKey { .. } => "MissingKey",
            ConfigError::Invalid { .. } => "Invalid",
            ConfigError::WatchEnded => "WatchEnded",
        }
    }
}

/// Parses the ConfigMap's document.
pub fn parse(cm: &ConfigMap) -> Result<SidecarConfig, ConfigError> {
    let name = cm.metadata.name.clone().unwrap_or_default();
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(CONFIG_KEY))
        .ok_or_else(|| ConfigError::MissingKey { name: name.clone() })?;
    serde_json::from_str(text).map_err(|source| ConfigError::Invalid { name, source })
}

/// Watches `<cluster>-config` and returns a receiver holding the latest valid configuration. Waits for
/// the first one (the operator creates the ConfigMap before the StatefulSet). An invalid update is
/// logged and ignored: the last valid configuration stays in force.
pub async fn watch_config(
    client: Client,
    namespace: &str,
    cluster: &str,
) -> Result<watch::Receiver<SidecarConfig>, ConfigError> {
    let name = config_map_name(cluster);
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let mut stream = Box::pin(watcher::watch_object(api, &name).default_backoff());
    let first = loop {
        match stream.next().await {
            None => return Err(ConfigError::WatchEnded),
            Some(Ok(Some(cm))) => match parse(&cm) {
                Ok(config) => break config,
                Err(error) => warn!(%error, "waiting for a valid configuration"),
            },
            Some(Ok(None)) => info!(configmap = %name, "waiting for the ConfigMap"),
            Some(Err(error)) => warn!(%error, "ConfigMap watch error (retrying)"),
        }
    };
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        while let Some(event) = stream.next().await {
            match event {
                Ok(Some(cm)) => match parse(&cm) {
                    Ok(config) => {
                        tx.send_if_modified(|current| {
                            let changed = *current != config;
                            if changed {
                                info!(
                                    paused = config.paused,
                                    mode = ?config.replication.mode,
                                    instances = config.instances,
                                    "configuration changed"
                                );
                                *current = config;
                            }
                            changed
                        });
                    }
                    Err(error) => {
                        warn!(%error, category = error.category(), "ignoring an invalid configuration")
                    }
                },
                Ok(None) => warn!("the ConfigMap was deleted: keeping the last configuration"),
                Err(error) => warn!(%error, "ConfigMap watch error (retrying)"),
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kube::api::ObjectMeta;
    use pgpilot_crds::contract::ReplicationMode;

    use super::*;

    fn cm(data: Option<&str>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("c-config".into()),
                ..ObjectMeta::default()
            },
            data: data.map(|d| BTreeMap::from([(CONFIG_KEY.to_owned(), d.to_owned())])),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn parses_the_document_and_refuses_garbage() {
        let c = parse(&cm(Some(
            r#"{"replication":{"mode":"sync"},"paused":true}"#,
        )))
        .unwrap();
        assert_eq!(c.replication.mode, ReplicationMode::Sync);
        assert!(c.paused);
        assert!(matches!(
            parse(&cm(None)),
            Err(ConfigError::MissingKey { .. })
        ));
        assert!(matches!(
            parse(&cm(Some("{"))),
            Err(ConfigError::Invalid { .. })
        ));
    }
}
