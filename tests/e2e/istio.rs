//! The Istio manifests in envoy-configs/istio/ agree with each other, with the Gantry config they
//! embed, and with their README. Nothing here talks to Kubernetes or Istio: the manifests are
//! checked for consistency, not applied to a cluster.

use std::collections::BTreeSet;

use gantry_ext_proc::http_stream::METADATA_NAMESPACE;
use gantry_policy::{ConfigFile, FailureMode};
use gantry_testkit::project_root;
use serde_json::Value;

const DIR: &str = "envoy-configs/istio";
const GANTRY: &str = "gantry.yaml";
const MESH: &str = "mesh-config.yaml";
const POLICY: &str = "authorization-policy.yaml";
const EXT_PROC: &str = "ext-proc-envoyfilter.yaml";
const README: &str = "README.md";
/// The manifests the README's apply order names; any other `.yaml` in the folder is checked too.
const REQUIRED: &[&str] = &[GANTRY, MESH, POLICY, EXT_PROC];

const CONFIG_MAP: &str = "gantry-config";
const CONFIG_KEY: &str = "gantry.yaml";
const AUTHZ_SERVICE: &str = "gantry-authz";
const EXT_PROC_SERVICE: &str = "gantry-extproc";
const EXT_AUTHZ_NAMESPACE: &str = "envoy.filters.http.ext_authz";

/// One YAML document of a manifest file; every accessor names the file, the object and the
/// field when it fails.
struct Manifest {
    file: String,
    index: usize,
    value: Value,
}

impl Manifest {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("?")
    }

    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("?")
    }

    /// `envoy-configs/istio/FILE (Kind name)`, the prefix of every message.
    fn label(&self) -> String {
        format!("{DIR}/{} ({} {})", self.file, self.kind(), self.name())
    }

    /// The field at a JSON pointer such as `/spec/ports/0/port`.
    fn at(&self, pointer: &str) -> &Value {
        self.value
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{}: missing field {pointer}", self.label()))
    }

    fn str_at(&self, pointer: &str) -> &str {
        let value = self.at(pointer);
        value
            .as_str()
            .unwrap_or_else(|| panic!("{}: {pointer} is not a string: {value}", self.label()))
    }

    fn u64_at(&self, pointer: &str) -> u64 {
        let value = self.at(pointer);
        value.as_u64().unwrap_or_else(|| {
            panic!(
                "{}: {pointer} is not a non-negative integer: {value}",
                self.label()
            )
        })
    }

    fn bool_at(&self, pointer: &str) -> bool {
        let value = self.at(pointer);
        value
            .as_bool()
            .unwrap_or_else(|| panic!("{}: {pointer} is not a boolean: {value}", self.label()))
    }

    fn array_at(&self, pointer: &str) -> &Vec<Value> {
        let value = self.at(pointer);
        value
            .as_array()
            .unwrap_or_else(|| panic!("{}: {pointer} is not a list: {value}", self.label()))
    }

    /// A string-to-string map such as labels or a selector, never empty.
    fn labels_at(&self, pointer: &str) -> BTreeSet<(String, String)> {
        let value = self.at(pointer);
        let map = value
            .as_object()
            .unwrap_or_else(|| panic!("{}: {pointer} is not a map: {value}", self.label()));
        assert!(!map.is_empty(), "{}: {pointer} is empty", self.label());
        map.iter()
            .map(|(k, v)| {
                let v = v.as_str().unwrap_or_else(|| {
                    panic!("{}: {pointer}/{k} is not a string: {v}", self.label())
                });
                (k.clone(), v.to_string())
            })
            .collect()
    }
}

fn read(file: &str) -> String {
    let path = project_root().join(DIR).join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {DIR}/{file}: {e}"))
}

/// Every document of a manifest file.
fn load(file: &str) -> Vec<Manifest> {
    let values: Vec<Value> = serde_saphyr::from_multiple(&read(file))
        .unwrap_or_else(|e| panic!("{DIR}/{file} is not valid YAML: {e}"));
    values
        .into_iter()
        .enumerate()
        .map(|(index, value)| Manifest {
            file: file.to_string(),
            index,
            value,
        })
        .collect()
}

/// The one object of this kind and name in a file.
fn find(file: &str, kind: &str, name: &str) -> Manifest {
    let mut found: Vec<Manifest> = load(file)
        .into_iter()
        .filter(|m| m.kind() == kind && m.name() == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{DIR}/{file}: expected exactly one {kind} named {name}, found {}",
        found.len()
    );
    found.remove(0)
}

/// The one object of this kind in a file, whatever its name.
fn only(file: &str, kind: &str) -> Manifest {
    let mut found: Vec<Manifest> = load(file)
        .into_iter()
        .filter(|m| m.kind() == kind)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{DIR}/{file}: expected exactly one {kind}, found {}",
        found.len()
    );
    found.remove(0)
}

fn yaml_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(project_root().join(DIR))
        .unwrap_or_else(|e| panic!("cannot list {DIR}: {e}"))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .collect();
    files.sort();
    files
}

fn deployment() -> Manifest {
    find(GANTRY, "Deployment", "gantry")
}

/// The Gantry config embedded in the ConfigMap, parsed and validated like `gantry serve` does.
fn gantry_config() -> ConfigFile {
    let config_map = find(GANTRY, "ConfigMap", CONFIG_MAP);
    let text = config_map.str_at(&format!("/data/{CONFIG_KEY}"));
    ConfigFile::parse(text).unwrap_or_else(|e| {
        panic!(
            "{}: data.{CONFIG_KEY} does not validate as a Gantry config:\n{e}",
            config_map.label()
        )
    })
}

/// The pointer to the Deployment's `gantry` container.
fn container_pointer(deploy: &Manifest) -> String {
    let containers = deploy.array_at("/spec/template/spec/containers");
    let index = containers
        .iter()
        .position(|c| c["name"] == "gantry")
        .unwrap_or_else(|| {
            panic!(
                "{}: no container named gantry in /spec/template/spec/containers",
                deploy.label()
            )
        });
    format!("/spec/template/spec/containers/{index}")
}

/// The container port with this name.
fn container_port(deploy: &Manifest, port_name: &str) -> u64 {
    let container = container_pointer(deploy);
    let ports = deploy.array_at(&format!("{container}/ports"));
    let index = ports
        .iter()
        .position(|p| p["name"] == port_name)
        .unwrap_or_else(|| {
            panic!(
                "{}: no port named {port_name} in {container}/ports",
                deploy.label()
            )
        });
    deploy.u64_at(&format!("{container}/ports/{index}/containerPort"))
}

/// A Service's only port: (port, target port resolved against the Deployment's container ports).
fn service_port(service: &Manifest, deploy: &Manifest) -> (u64, u64) {
    let ports = service.array_at("/spec/ports");
    assert_eq!(
        ports.len(),
        1,
        "{}: /spec/ports should hold exactly one port",
        service.label()
    );
    let port = service.u64_at("/spec/ports/0/port");
    let target = match service.value.pointer("/spec/ports/0/targetPort") {
        None => port,
        Some(Value::String(name)) => container_port(deploy, name),
        Some(_) => service.u64_at("/spec/ports/0/targetPort"),
    };
    (port, target)
}

/// `0.5s`, `1s`, `330s` as milliseconds.
fn duration_ms(manifest: &Manifest, pointer: &str) -> u64 {
    let text = manifest.str_at(pointer);
    let seconds: f64 = text
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{}: {pointer} = {text:?} is not a duration in seconds such as 0.5s",
                manifest.label()
            )
        });
    (seconds * 1000.0).round() as u64
}

/// The `kubectl create secret generic ...` command in the README, continuation lines joined.
fn readme_secret_command() -> String {
    let readme = read(README);
    let joined = readme.replace("\\\n", " ");
    let commands: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("kubectl create secret"))
        .collect();
    assert_eq!(
        commands.len(),
        1,
        "{DIR}/{README}: expected exactly one `kubectl create secret` command, found {commands:?}"
    );
    commands[0].to_string()
}

#[test]
fn every_manifest_parses_and_every_document_names_itself() {
    let files = yaml_files();
    for required in REQUIRED {
        assert!(
            files.iter().any(|f| f == required),
            "{DIR}/{required} is missing (found {files:?})"
        );
    }
    let readme = read(README);
    for file in &files {
        assert!(
            readme.contains(file.as_str()),
            "{DIR}/{README} does not mention {file}"
        );
        let docs = load(file);
        assert!(!docs.is_empty(), "{DIR}/{file} holds no YAML document");
        for doc in &docs {
            let at = format!("{DIR}/{file} (document {})", doc.index + 1);
            assert!(doc.value.is_object(), "{at}: not a mapping: {}", doc.value);
            for field in ["/apiVersion", "/kind", "/metadata/name"] {
                let value = doc.value.pointer(field);
                assert!(
                    value.and_then(Value::as_str).is_some_and(|s| !s.is_empty()),
                    "{at}: {field} is missing or not a non-empty string: {value:?}"
                );
            }
            assert_ne!(
                doc.kind(),
                "Secret",
                "{}: Secrets must not be checked in; the README creates it with kubectl",
                doc.label()
            );
        }
    }
}

#[test]
fn embedded_config_validates_and_its_ports_match_the_containers_and_services() {
    let config = gantry_config();
    let config_map = find(GANTRY, "ConfigMap", CONFIG_MAP);
    let deploy = deployment();
    let at = format!("{} data.{CONFIG_KEY}", config_map.label());

    assert!(
        config
            .auth
            .as_ref()
            .and_then(|a| a.listen.as_ref())
            .is_some(),
        "{at}: auth.listen must be set (the default is loopback, unreachable from the gateway)"
    );
    assert!(
        config.ext_proc.listen.is_some(),
        "{at}: ext_proc.listen must be set (the default is loopback, unreachable from the gateway)"
    );
    for (field, addr) in [
        ("auth.listen", config.auth_addr()),
        ("ext_proc.listen", config.ext_proc_addr()),
    ] {
        assert!(
            addr.ip().is_unspecified(),
            "{at}: {field} = {addr} must listen on all interfaces (0.0.0.0) for the Service to reach it"
        );
    }
    for (field, addr) in [
        ("listen", config.listen_addr()),
        ("admin", config.admin_addr()),
    ] {
        assert!(
            addr.ip().is_loopback(),
            "{at}: {field} = {addr} is unused under Istio and should stay on loopback"
        );
    }

    for (field, port, port_name, service_name) in [
        (
            "auth.listen",
            config.auth_addr().port(),
            "grpc-authz",
            AUTHZ_SERVICE,
        ),
        (
            "ext_proc.listen",
            config.ext_proc_addr().port(),
            "grpc-extproc",
            EXT_PROC_SERVICE,
        ),
    ] {
        let port = u64::from(port);
        let container = container_port(&deploy, port_name);
        assert_eq!(
            container,
            port,
            "{}: containerPort of port {port_name} ({container}) differs from the config's {field} port ({port})",
            deploy.label()
        );
        let service = find(GANTRY, "Service", service_name);
        let (service_port, target) = service_port(&service, &deploy);
        assert_eq!(
            service_port,
            port,
            "{}: /spec/ports/0/port ({service_port}) differs from the config's {field} port ({port})",
            service.label()
        );
        assert_eq!(
            target,
            port,
            "{}: /spec/ports/0/targetPort resolves to {target}, not the config's {field} port ({port})",
            service.label()
        );
        assert_eq!(
            service.str_at("/spec/ports/0/name"),
            port_name,
            "{}: /spec/ports/0/name",
            service.label()
        );
        assert_eq!(
            service.str_at("/spec/ports/0/appProtocol"),
            "grpc",
            "{}: /spec/ports/0/appProtocol must be grpc so Istio speaks HTTP/2 to it",
            service.label()
        );
    }
}

#[test]
fn deployment_runs_gantry_serve_on_the_config_map() {
    let deploy = deployment();
    let container = container_pointer(&deploy);
    let command: Vec<&str> = deploy
        .array_at(&format!("{container}/command"))
        .iter()
        .chain(
            deploy
                .value
                .pointer(&format!("{container}/args"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        )
        .map(|v| {
            v.as_str().unwrap_or_else(|| {
                panic!(
                    "{}: {container}/command: {v} is not a string",
                    deploy.label()
                )
            })
        })
        .collect();
    assert_eq!(
        command.get(..2),
        Some(&["gantry", "serve"][..]),
        "{}: {container}/command should start with `gantry serve`: {command:?}",
        deploy.label()
    );
    let config_path = command
        .iter()
        .position(|a| *a == "--config")
        .and_then(|i| command.get(i + 1))
        .unwrap_or_else(|| {
            panic!(
                "{}: {container}/command has no `--config PATH`: {command:?}",
                deploy.label()
            )
        });

    let volumes = deploy.array_at("/spec/template/spec/volumes");
    let volume = volumes
        .iter()
        .position(|v| v["configMap"]["name"] == CONFIG_MAP)
        .unwrap_or_else(|| {
            panic!(
                "{}: no volume in /spec/template/spec/volumes mounts ConfigMap {CONFIG_MAP}",
                deploy.label()
            )
        });
    let volume_pointer = format!("/spec/template/spec/volumes/{volume}");
    let volume_name = deploy.str_at(&format!("{volume_pointer}/name"));
    let file_in_volume = match deploy
        .value
        .pointer(&format!("{volume_pointer}/configMap/items"))
    {
        None => CONFIG_KEY.to_string(),
        Some(_) => {
            let items = deploy.array_at(&format!("{volume_pointer}/configMap/items"));
            let item = items
                .iter()
                .position(|i| i["key"] == CONFIG_KEY)
                .unwrap_or_else(|| {
                    panic!(
                        "{}: {volume_pointer}/configMap/items does not project key {CONFIG_KEY}",
                        deploy.label()
                    )
                });
            deploy
                .str_at(&format!("{volume_pointer}/configMap/items/{item}/path"))
                .to_string()
        }
    };
    let mounts = deploy.array_at(&format!("{container}/volumeMounts"));
    let mount = mounts
        .iter()
        .position(|m| m["name"] == volume_name)
        .unwrap_or_else(|| {
            panic!(
                "{}: volume {volume_name} is not mounted in {container}/volumeMounts",
                deploy.label()
            )
        });
    let mount_path = deploy.str_at(&format!("{container}/volumeMounts/{mount}/mountPath"));
    let expected = format!("{}/{file_in_volume}", mount_path.trim_end_matches('/'));
    assert_eq!(
        *config_path,
        expected,
        "{}: `--config {config_path}` is not where ConfigMap {CONFIG_MAP} key {CONFIG_KEY} is mounted ({expected})",
        deploy.label()
    );
}

#[test]
fn mesh_provider_matches_the_policy_and_the_authz_service() {
    let config = gantry_config();
    let auth = config.auth.as_ref().unwrap_or_else(|| {
        panic!("{DIR}/{GANTRY} ConfigMap {CONFIG_MAP}: the Gantry config has no auth section")
    });
    let policy = only(POLICY, "AuthorizationPolicy");
    let mesh = only(MESH, "IstioOperator");
    let deploy = deployment();
    let service = find(GANTRY, "Service", AUTHZ_SERVICE);

    assert_eq!(
        policy.str_at("/spec/action"),
        "CUSTOM",
        "{}: /spec/action",
        policy.label()
    );
    let provider_name = policy.str_at("/spec/provider/name");
    let providers = mesh.array_at("/spec/meshConfig/extensionProviders");
    let matching: Vec<usize> = providers
        .iter()
        .enumerate()
        .filter(|(_, p)| p["name"] == provider_name)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "{}: /spec/meshConfig/extensionProviders should declare {provider_name:?} (the provider.name of {}) exactly once",
        mesh.label(),
        policy.label()
    );
    let grpc = format!(
        "/spec/meshConfig/extensionProviders/{}/envoyExtAuthzGrpc",
        matching[0]
    );

    let fqdn = format!(
        "{}.{}.svc.cluster.local",
        service.name(),
        service.str_at("/metadata/namespace")
    );
    assert_eq!(
        mesh.str_at(&format!("{grpc}/service")),
        fqdn,
        "{}: {grpc}/service must name Service {} in {DIR}/{GANTRY}",
        mesh.label(),
        service.name()
    );
    let (port, _) = service_port(&service, &deploy);
    assert_eq!(
        mesh.u64_at(&format!("{grpc}/port")),
        port,
        "{}: {grpc}/port differs from {}'s /spec/ports/0/port",
        mesh.label(),
        service.label()
    );

    let body = format!("{grpc}/includeRequestBodyInCheck");
    let max_bytes = mesh.u64_at(&format!("{body}/maxRequestBytes"));
    assert!(
        max_bytes >= config.max_request_body_bytes(),
        "{}: {body}/maxRequestBytes ({max_bytes}) is below the Gantry config's max_request_body_bytes ({})",
        mesh.label(),
        config.max_request_body_bytes()
    );
    assert!(
        !mesh.bool_at(&format!("{body}/allowPartialMessage")),
        "{}: {body}/allowPartialMessage must be false: a cut body hides the model, and partial buffering before ext_proc's BUFFERED body stalls large uploads",
        mesh.label()
    );
    assert_eq!(
        mesh.bool_at(&format!("{grpc}/failOpen")),
        auth.failure_mode == FailureMode::Open,
        "{}: {grpc}/failOpen disagrees with the Gantry config's auth.failure_mode ({:?})",
        mesh.label(),
        auth.failure_mode
    );
    assert_eq!(
        duration_ms(&mesh, &format!("{grpc}/timeout")),
        auth.timeout_ms(),
        "{}: {grpc}/timeout disagrees with the Gantry config's auth.timeout_ms",
        mesh.label()
    );
    // Istio's field is a string: an unquoted 503 is a YAML number, which istiod rejects.
    let status = mesh.str_at(&format!("{grpc}/statusOnError"));
    assert!(
        status
            .parse::<u16>()
            .is_ok_and(|code| (400..600).contains(&code)),
        "{}: {grpc}/statusOnError = {status:?} is not an HTTP error status",
        mesh.label()
    );

    let ext_proc = only(EXT_PROC, "EnvoyFilter");
    assert_eq!(
        policy.labels_at("/spec/selector/matchLabels"),
        ext_proc.labels_at("/spec/workloadSelector/labels"),
        "{}: /spec/selector/matchLabels must select the same gateway as {}'s /spec/workloadSelector/labels",
        policy.label(),
        ext_proc.label()
    );
    let paths = policy.array_at("/spec/rules/0/to/0/operation/paths");
    for path in ["/v1/*", "/mcp*"] {
        assert!(
            paths.iter().any(|p| p == path),
            "{}: /spec/rules/0/to/0/operation/paths does not list {path}: {paths:?}",
            policy.label()
        );
    }
}

#[test]
fn ext_proc_filter_points_at_the_ext_proc_service() {
    let config = gantry_config();
    let filter = only(EXT_PROC, "EnvoyFilter");
    let deploy = deployment();
    let service = find(GANTRY, "Service", EXT_PROC_SERVICE);

    let patches = filter.array_at("/spec/configPatches");
    let index = patches
        .iter()
        .position(|p| p["patch"]["value"]["name"] == "envoy.filters.http.ext_proc")
        .unwrap_or_else(|| {
            panic!(
                "{}: no entry of /spec/configPatches inserts envoy.filters.http.ext_proc",
                filter.label()
            )
        });
    let patch = format!("/spec/configPatches/{index}");
    assert_eq!(
        filter.str_at(&format!("{patch}/match/context")),
        "GATEWAY",
        "{}: {patch}/match/context",
        filter.label()
    );
    assert_eq!(
        filter.str_at(&format!("{patch}/patch/operation")),
        "INSERT_BEFORE",
        "{}: {patch}/patch/operation",
        filter.label()
    );
    assert_eq!(
        filter.str_at(&format!(
            "{patch}/match/listener/filterChain/filter/subFilter/name"
        )),
        "envoy.filters.http.router",
        "{}: {patch}/match/listener/filterChain/filter/subFilter/name: ext_proc goes just before the router",
        filter.label()
    );

    let typed = format!("{patch}/patch/value/typed_config");
    let (port, _) = service_port(&service, &deploy);
    let cluster = format!(
        "outbound|{port}||{}.{}.svc.cluster.local",
        service.name(),
        service.str_at("/metadata/namespace")
    );
    assert_eq!(
        filter.str_at(&format!("{typed}/grpc_service/envoy_grpc/cluster_name")),
        cluster,
        "{}: {typed}/grpc_service/envoy_grpc/cluster_name must be Istio's cluster for {}",
        filter.label(),
        service.label()
    );

    let receiving = filter.array_at(&format!(
        "{typed}/metadata_options/receiving_namespaces/untyped"
    ));
    assert!(
        receiving.iter().any(|n| n == METADATA_NAMESPACE),
        "{}: {typed}/metadata_options/receiving_namespaces/untyped must list {METADATA_NAMESPACE:?} (Gantry's metadata is dropped otherwise): {receiving:?}",
        filter.label()
    );
    let forwarding = filter.array_at(&format!(
        "{typed}/metadata_options/forwarding_namespaces/untyped"
    ));
    assert!(
        forwarding.iter().any(|n| n == EXT_AUTHZ_NAMESPACE),
        "{}: {typed}/metadata_options/forwarding_namespaces/untyped must list {EXT_AUTHZ_NAMESPACE:?} (the principal ext_authz decided on): {forwarding:?}",
        filter.label()
    );

    assert_eq!(
        filter.bool_at(&format!("{typed}/failure_mode_allow")),
        config.ext_proc.failure_mode == FailureMode::Open,
        "{}: {typed}/failure_mode_allow disagrees with the Gantry config's ext_proc.failure_mode ({:?})",
        filter.label(),
        config.ext_proc.failure_mode
    );
    assert_eq!(
        duration_ms(&filter, &format!("{typed}/message_timeout")),
        config.message_timeout_ms(),
        "{}: {typed}/message_timeout disagrees with the Gantry config's ext_proc.message_timeout_ms",
        filter.label()
    );
    let stream_ms = duration_ms(&filter, &format!("{typed}/grpc_service/timeout"));
    let slowest_secs = config
        .providers
        .iter()
        .map(|p| p.timeout_secs())
        .max()
        .unwrap_or(0);
    assert!(
        stream_ms > slowest_secs * 1000,
        "{}: {typed}/grpc_service/timeout ({stream_ms} ms) must outlive the slowest provider's timeout_secs ({slowest_secs} s), or long replies are cut",
        filter.label()
    );
    assert_eq!(
        filter.str_at(&format!("{typed}/processing_mode/request_body_mode")),
        "BUFFERED",
        "{}: {typed}/processing_mode/request_body_mode: Gantry reads the model from the whole body",
        filter.label()
    );
    assert!(
        filter.bool_at(&format!("{typed}/allow_mode_override")),
        "{}: {typed}/allow_mode_override must be true: Gantry picks the response body mode per reply",
        filter.label()
    );
}

#[test]
fn deployment_selector_matches_its_pods_and_every_service_selects_them() {
    let deploy = deployment();
    let namespace = deploy.str_at("/metadata/namespace");
    let pod_labels = deploy.labels_at("/spec/template/metadata/labels");
    let selector = deploy.labels_at("/spec/selector/matchLabels");
    assert!(
        selector.is_subset(&pod_labels),
        "{}: /spec/selector/matchLabels {selector:?} does not match /spec/template/metadata/labels {pod_labels:?}",
        deploy.label()
    );

    let services: Vec<Manifest> = load(GANTRY)
        .into_iter()
        .filter(|m| m.kind() == "Service")
        .collect();
    for name in [AUTHZ_SERVICE, EXT_PROC_SERVICE] {
        assert!(
            services.iter().any(|s| s.name() == name),
            "{DIR}/{GANTRY}: no Service named {name}"
        );
    }
    for service in &services {
        assert_eq!(
            service.str_at("/metadata/namespace"),
            namespace,
            "{}: /metadata/namespace differs from {}'s",
            service.label(),
            deploy.label()
        );
        let selects = service.labels_at("/spec/selector");
        assert!(
            selects.is_subset(&pod_labels),
            "{}: /spec/selector {selects:?} does not select the pods of {} ({pod_labels:?})",
            service.label(),
            deploy.label()
        );
    }
}

#[test]
fn provider_keys_come_from_the_secret_the_readme_creates() {
    let config = gantry_config();
    let deploy = deployment();
    let namespace = deploy.str_at("/metadata/namespace");
    let container = container_pointer(&deploy);
    let env = deploy.array_at(&format!("{container}/env"));

    // (variable, Secret name, Secret key) for every variable read from a Secret.
    let mut from_secrets = Vec::new();
    for (i, var) in env.iter().enumerate() {
        if var.pointer("/valueFrom/secretKeyRef").is_none() {
            continue;
        }
        let at = format!("{container}/env/{i}");
        from_secrets.push((
            deploy.str_at(&format!("{at}/name")).to_string(),
            deploy
                .str_at(&format!("{at}/valueFrom/secretKeyRef/name"))
                .to_string(),
            deploy
                .str_at(&format!("{at}/valueFrom/secretKeyRef/key"))
                .to_string(),
        ));
    }
    for provider in &config.providers {
        if let Some(var) = &provider.api_key_env {
            assert!(
                from_secrets.iter().any(|(name, _, _)| *name == var.value),
                "{}: {container}/env does not set {} (api_key_env of provider {}) from a Secret",
                deploy.label(),
                var.value,
                provider.name.value
            );
        }
    }
    assert!(
        !from_secrets.is_empty(),
        "{}: {container}/env reads nothing from a Secret",
        deploy.label()
    );

    let command = readme_secret_command();
    let words: Vec<&str> = command.split_whitespace().collect();
    let created = words
        .iter()
        .position(|w| *w == "generic")
        .and_then(|i| words.get(i + 1))
        .unwrap_or_else(|| {
            panic!("{DIR}/{README}: `{command}` is not `kubectl create secret generic NAME ...`")
        });
    let in_namespace = words
        .windows(2)
        .any(|w| (w[0] == "--namespace" || w[0] == "-n") && w[1] == namespace)
        || words.contains(&format!("--namespace={namespace}").as_str());
    assert!(
        in_namespace,
        "{DIR}/{README}: `{command}` does not create the Secret in namespace {namespace}"
    );
    for (var, secret, key) in &from_secrets {
        assert_eq!(
            created,
            secret,
            "{}: {container}/env {var} reads Secret {secret}, but {DIR}/{README} creates {created}",
            deploy.label()
        );
        assert!(
            command.contains(&format!("--from-literal={key}=")),
            "{DIR}/{README}: `{command}` does not set key {key} that {} reads for {var}",
            deploy.label()
        );
    }
}
