//! Task networks through CNI plugins (issue 15), by the exec protocol of the CNI 1.0 spec. Each
//! plugin of the agent's network list is a binary in the plugin directory (Debian's
//! `containernetworking-plugins`: `/usr/lib/cni`), run with `CNI_COMMAND` (ADD or DEL),
//! `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME` and `CNI_PATH` in its environment and its
//! configuration as JSON on stdin; it answers a result (ADD) or an error as JSON on stdout.
//! ADD runs the plugins in order, each given the result so far; DEL runs them in reverse with
//! the ADD's result, kept on disk so that a DEL after an agent restart sends what the ADD got
//! (and a DEL without it still releases what the plugins hold: they key it by container ID).
//! Plugins are not safe to run concurrently: an agent makes one call at a time.
//!
//! The network list, each plugin's input, results and errors are pure and tested without
//! plugins; `containerd::network` drives the calls for each task.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use berth_model::Protocol;
use serde_json::{json, Value};

/// The version of the CNI spec berth speaks (Debian 12's plugins support it).
pub const CNI_VERSION: &str = "1.0.0";

/// Where Debian installs the plugins.
pub const DEFAULT_PLUGIN_DIR: &str = "/usr/lib/cni";

/// The task's interface inside its network namespace.
pub const IFNAME: &str = "eth0";

/// An IPv4 subnet, `ADDRESS/PREFIX`, with the address the network's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

/// A subnet flag that cannot be used, said so that the user knows what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task subnet {value:?}: {reason}")]
pub struct SubnetError {
    value: String,
    reason: String,
}

impl FromStr for Subnet {
    type Err = SubnetError;

    fn from_str(value: &str) -> Result<Self, SubnetError> {
        let bad = |reason: String| SubnetError {
            value: value.to_owned(),
            reason,
        };
        let (addr, prefix) = value
            .split_once('/')
            .ok_or_else(|| bad("expected ADDRESS/PREFIX, like 10.88.0.0/24".into()))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| bad(format!("{addr:?} is not an IPv4 address")))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=28).contains(p))
            .ok_or_else(|| {
                bad("the prefix must be between 8 and 28 (a /28 has room for 10 tasks)".into())
            })?;
        let mask = u32::MAX << (32 - u32::from(prefix));
        let network = Ipv4Addr::from(u32::from(addr) & mask);
        if network != addr {
            return Err(bad(format!(
                "{addr} is not the network's address; did you mean {network}/{prefix}?"
            )));
        }
        Ok(Self { network, prefix })
    }
}

impl Subnet {
    fn size(self) -> u32 {
        1u32 << (32 - u32::from(self.prefix))
    }

    /// The bridge's address: the first of the subnet. Tasks route through it, and the node's
    /// service discovery answers on it.
    pub fn gateway(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The addresses the node serves discovered services on, one per service: the last
    /// eighth of the subnet (4 to 256 addresses) before the broadcast address. Tasks get
    /// their addresses below them.
    pub fn service_addresses(self) -> std::ops::RangeInclusive<u32> {
        let last = u32::from(self.network) + self.size() - 2;
        let count = (self.size() / 8).clamp(4, 256);
        last - count + 1..=last
    }

    /// The last address tasks get.
    pub fn last_task_address(self) -> Ipv4Addr {
        Ipv4Addr::from(self.service_addresses().start() - 1)
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The default bridge of a node's task network.
pub const DEFAULT_BRIDGE: &str = "berth0";

/// The default task subnet of a node (each node's tasks are reached through its published
/// ports, so nodes may all use the same one, as Docker's bridge networks do).
pub const DEFAULT_SUBNET: &str = "10.220.0.0/16";

/// A bridge name Linux accepts: 1 to 15 characters of letters, digits, `-`, `_` and `.`.
pub fn bridge_name(value: &str) -> Result<String, String> {
    let ok = (1..=15).contains(&value.len())
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{value:?} is not a usable interface name: use 1 to 15 letters, digits, '-', '_' or '.'"
        ))
    }
}

/// The network an agent attaches its tasks to.
#[derive(Debug, Clone)]
pub struct NetworkSettings {
    /// The node's bridge (the bridge plugin creates it), e.g. `berth0`.
    pub bridge: String,
    /// Tasks get addresses from it; the bridge, their gateway, its first.
    pub subnet: Subnet,
    /// Where the plugins are.
    pub plugin_dir: PathBuf,
    /// Where host-local keeps its allocations and the agent the results of ADD.
    pub state_dir: PathBuf,
    /// The node's address that published ports are held on (the advertised one; unspecified:
    /// every address). Not every address: a service's discovery address on the bridge may
    /// listen on the same port number.
    pub host_address: Ipv4Addr,
    /// How many namespaces to keep attached ahead of any task, so that a task starts without
    /// waiting for the plugins (0: each task's is made when it starts).
    pub warm: usize,
}

/// The default number of warm namespaces an agent keeps ready.
pub const DEFAULT_WARM: usize = 2;

/// A port of a task published on its node (the portmap plugin's `portMappings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortBinding {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Protocol,
}

/// The network list every task is attached with: a bridge with masquerading and addresses from
/// the subnet (host-local), published ports (portmap), and the firewall plugin's rules that let
/// traffic to the task through.
pub fn network_list(s: &NetworkSettings) -> Value {
    json!({
        "cniVersion": CNI_VERSION,
        "name": format!("berth-{}", s.bridge),
        "plugins": [
            {
                "type": "bridge",
                "bridge": s.bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{
                        "subnet": s.subnet.to_string(),
                        "rangeEnd": s.subnet.last_task_address().to_string(),
                    }]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": s.state_dir.join("ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
            {"type": "firewall", "backend": "iptables"},
        ],
    })
}

/// The runtime configuration of one attachment: the ports to publish.
pub fn runtime_config(ports: &[PortBinding]) -> Value {
    let mappings: Vec<Value> = ports
        .iter()
        .map(|p| {
            json!({
                "hostPort": p.host_port,
                "containerPort": p.container_port,
                "protocol": p.protocol.as_str(),
            })
        })
        .collect();
    json!({ "portMappings": mappings })
}

/// The ports of a runtime configuration made by [`runtime_config`].
pub fn runtime_ports(runtime: &Value) -> Vec<PortBinding> {
    runtime["portMappings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            Some(PortBinding {
                host_port: u16::try_from(m["hostPort"].as_u64()?).ok()?,
                container_port: u16::try_from(m["containerPort"].as_u64()?).ok()?,
                protocol: m["protocol"].as_str()?.parse().ok()?,
            })
        })
        .collect()
}

/// What plugin `plugin` of `list` reads on stdin: its own configuration with the list's name
/// and version, the runtime configuration of the capabilities it declares, and the result so
/// far (ADD: of the plugins before it; DEL: of the whole ADD).
pub fn plugin_input(list: &Value, plugin: &Value, runtime: &Value, prev: Option<&Value>) -> Value {
    let mut input = plugin.clone();
    input["name"] = list["name"].clone();
    input["cniVersion"] = list["cniVersion"].clone();
    if let Some(caps) = plugin["capabilities"].as_object() {
        let wanted: serde_json::Map<String, Value> = caps
            .iter()
            .filter(|(_, on)| on.as_bool() == Some(true))
            .filter_map(|(cap, _)| runtime.get(cap).map(|v| (cap.clone(), v.clone())))
            .collect();
        if !wanted.is_empty() {
            input["runtimeConfig"] = Value::Object(wanted);
        }
    }
    if let Some(prev) = prev {
        input["prevResult"] = prev.clone();
    }
    input
}

/// The task's IPv4 address in an ADD result (`ips[].address`, `ADDRESS/PREFIX`).
pub fn task_address(result: &Value) -> Option<Ipv4Addr> {
    result["ips"]
        .as_array()?
        .iter()
        .filter_map(|ip| ip["address"].as_str())
        .find_map(|a| a.split_once('/').and_then(|(addr, _)| addr.parse().ok()))
}

/// What went wrong with a plugin.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("run CNI plugin {plugin}: {source}")]
    Run {
        plugin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The plugin's own error (CNI error codes: 1 incompatible version, 4 invalid config, 7
    /// invalid environment, 11 try again later…).
    #[error("CNI plugin {plugin} ({command}) failed with code {code}: {message}")]
    Plugin {
        plugin: String,
        command: &'static str,
        code: u64,
        message: String,
    },
    #[error("CNI plugin {plugin} ({command}) answered what is not a CNI result: {answer}")]
    Answer {
        plugin: String,
        command: &'static str,
        answer: String,
    },
    #[error("the CNI result of {container} gives the task no IPv4 address")]
    NoAddress { container: String },
    #[error("{op} {}: {source}", path.display())]
    Cache {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The plugin's error from what it wrote to stdout (`{"code", "msg", "details"}`), or what it
/// wrote to stderr when stdout is no CNI error.
pub fn plugin_error(plugin: &str, command: &'static str, stdout: &[u8], stderr: &[u8]) -> CniError {
    let parsed: Option<Value> = serde_json::from_slice(stdout).ok();
    match parsed.as_ref().and_then(|v| Some((v["code"].as_u64()?, v))) {
        Some((code, v)) => {
            let msg = v["msg"].as_str().unwrap_or_default();
            let message = match v["details"].as_str().filter(|d| !d.is_empty()) {
                Some(details) => format!("{msg}: {details}"),
                None => msg.to_owned(),
            };
            CniError::Plugin {
                plugin: plugin.to_owned(),
                command,
                code,
                message,
            }
        }
        None => CniError::Plugin {
            plugin: plugin.to_owned(),
            command,
            code: 0,
            message: String::from_utf8_lossy(if stdout.is_empty() { stderr } else { stdout })
                .trim()
                .to_owned(),
        },
    }
}

/// Whether plugin `plugin` of the list takes part in an ADD or DEL that publishes `publishing`
/// ports: portmap only when there are some (without, it passes the result on unchanged, and
/// its process is a few tens of milliseconds of a task's start).
pub fn takes_part(plugin: &Value, publishing: bool) -> bool {
    publishing || plugin["type"] != "portmap"
}

/// What an agent knows of one attachment (see [`Cni::attachment`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The task's address; none if the ADD did not finish.
    pub address: Option<Ipv4Addr>,
    /// Its published ports.
    pub ports: Vec<PortBinding>,
    /// Its network namespace, when the record says (a warm namespace keeps its own name).
    pub netns: Option<String>,
}

/// Attaches and detaches tasks' network namespaces with the plugins, one call at a time.
///
/// Each attachment has a record (`results/ID.json`): the container ID the plugins know it by
/// (`cniId`: the task's ID, or the warm namespace's it was made as), its namespace, its
/// published ports and the ADD's result. A warm namespace, attached before any task wants it,
/// becomes a task's by the rename of its record ([`Cni::adopt`]).
pub struct Cni {
    settings: NetworkSettings,
    list: Value,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Cni {
    pub fn new(settings: NetworkSettings) -> Self {
        Self {
            list: network_list(&settings),
            settings,
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    /// Attaches the namespace at `netns` (of container or task `id`) to the node's bridge,
    /// publishing `ports`; answers the task's address. A failure detaches what was attached.
    ///
    /// Call [`Cni::prepare`] first (before the namespace exists), so that an agent that dies in
    /// the middle still finds the attachment and detaches it; the record gets the ADD's result.
    pub async fn add(
        &self,
        id: &str,
        netns: &str,
        ports: &[PortBinding],
    ) -> Result<Ipv4Addr, CniError> {
        let runtime = runtime_config(ports);
        let mut result: Option<Value> = None;
        for plugin in self.plugins(!ports.is_empty()) {
            let input = plugin_input(&self.list, plugin, &runtime, result.as_ref());
            match self.invoke("ADD", id, netns, plugin, &input).await {
                Ok(answer) => result = Some(answer),
                Err(e) => {
                    self.undo(id, netns, &runtime, result.as_ref()).await;
                    return Err(e);
                }
            }
        }
        let result = result.unwrap_or(Value::Null);
        let Some(address) = task_address(&result) else {
            self.undo(id, netns, &runtime, Some(&result)).await;
            return Err(CniError::NoAddress {
                container: id.to_owned(),
            });
        };
        self.record(id, &Record::new(id, netns, &runtime, Some(&result)))?;
        Ok(address)
    }

    /// Makes the warm attachment `warm` task `task`'s: its record is renamed (one step, so a
    /// crash leaves it either warm or the task's, never both or neither). The plugins keep
    /// knowing it by `warm`'s ID. Publish its ports next with [`Cni::publish`].
    pub fn adopt(&self, warm: &str, task: &str) -> Result<(), CniError> {
        let (from, to) = (self.cache_path(warm), self.cache_path(task));
        std::fs::rename(&from, &to).map_err(|source| CniError::Cache {
            op: "rename",
            path: from,
            source,
        })
    }

    /// Publishes `ports` for the adopted attachment `id` (portmap's ADD alone, with the result
    /// the warm ADD got). The ports are recorded first, so a crash in between still removes
    /// them; a failure leaves them recorded for the detach that follows.
    pub async fn publish(&self, id: &str, ports: &[PortBinding]) -> Result<(), CniError> {
        if ports.is_empty() {
            return Ok(());
        }
        let cached = self.cached(id).ok_or_else(|| CniError::Cache {
            op: "read",
            path: self.cache_path(id),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        let record = Record::from_cached(id, &cached);
        let runtime = runtime_config(ports);
        self.record(
            id,
            &Record {
                runtime: &runtime,
                ..record
            },
        )?;
        let mut result = cached["result"].clone();
        for plugin in self.plugins(true).filter(|p| p["type"] == "portmap") {
            let input = plugin_input(&self.list, plugin, &runtime, Some(&result));
            result = self
                .invoke("ADD", record.cni_id, record.netns, plugin, &input)
                .await?;
        }
        self.record(
            id,
            &Record {
                runtime: &runtime,
                result: Some(&result),
                ..record
            },
        )
    }

    /// Detaches `id`'s namespace (its recorded one, else `netns`) and releases its address,
    /// ports and rules; nothing to release is no error. Run it while the namespace exists: the
    /// bridge plugin finds the address whose masquerade rules it removes on the task's
    /// interface (without the namespace it still succeeds, and leaves those rules). The record
    /// stays until [`Cni::forget`].
    pub async fn detach(&self, id: &str, netns: &str) -> Result<(), CniError> {
        let cached = self.cached(id);
        let record = cached.as_ref().map(|c| Record::from_cached(id, c));
        let (cni_id, netns) = match &record {
            Some(r) if !r.netns.is_empty() => (r.cni_id, r.netns),
            Some(r) => (r.cni_id, netns),
            None => (id, netns),
        };
        let runtime = cached
            .as_ref()
            .map_or_else(|| runtime_config(&[]), |c| c["runtimeConfig"].clone());
        let result = cached
            .as_ref()
            .map(|c| &c["result"])
            .filter(|r| !r.is_null());
        self.del(cni_id, netns, &runtime, result).await
    }

    /// Drops the record of a detached attachment.
    pub fn forget(&self, id: &str) -> Result<(), CniError> {
        let path = self.cache_path(id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CniError::Cache {
                op: "remove",
                path,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Records that `id` is about to be attached in `netns` with `ports`, before the namespace
    /// exists: a sweep after a crash then finds it ([`Cni::attached`]).
    pub fn prepare(&self, id: &str, netns: &str, ports: &[PortBinding]) -> Result<(), CniError> {
        self.record(id, &Record::new(id, netns, &runtime_config(ports), None))
    }

    /// The IDs of every attachment this agent recorded and has not detached, in any state.
    pub fn attached(&self) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.settings.state_dir.join("results")) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = dir
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".json").map(str::to_owned)
            })
            .collect();
        ids.sort();
        ids
    }

    /// What an attachment got; `None` when `id` is not attached.
    pub fn attachment(&self, id: &str) -> Option<Attachment> {
        let cached = self.cached(id)?;
        Some(Attachment {
            address: task_address(&cached["result"]),
            ports: runtime_ports(&cached["runtimeConfig"]),
            netns: cached["netns"].as_str().map(str::to_owned),
        })
    }

    /// Runs DEL after a failed ADD, with what the ADD got so far, and forgets the attachment.
    async fn undo(&self, id: &str, netns: &str, runtime: &Value, result: Option<&Value>) {
        if let Err(undo) = self.del(id, netns, runtime, result).await {
            tracing::warn!(id, "undo a failed CNI ADD: {undo}");
        }
        if let Err(e) = self.forget(id) {
            tracing::warn!(id, "{e}");
        }
    }

    fn cached(&self, id: &str) -> Option<Value> {
        std::fs::read(self.cache_path(id))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
    }

    fn record(&self, id: &str, record: &Record<'_>) -> Result<(), CniError> {
        let path = self.cache_path(id);
        let failed = |op, source| CniError::Cache {
            op,
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(self.settings.state_dir.join("results"))
            .map_err(|e| failed("create", e))?;
        // Written whole or not at all: a torn record would hide an attachment.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, record.to_json().to_string()).map_err(|e| failed("write", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| failed("write", e))
    }

    async fn del(
        &self,
        id: &str,
        netns: &str,
        runtime: &Value,
        result: Option<&Value>,
    ) -> Result<(), CniError> {
        let publishing = !runtime_ports(runtime).is_empty();
        let mut first_error = None;
        for plugin in self.plugins(publishing).rev() {
            let input = plugin_input(&self.list, plugin, runtime, result);
            if let Err(e) = self.invoke("DEL", id, netns, plugin, &input).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The list's plugins that take part in a call publishing ports or not ([`takes_part`]).
    fn plugins(&self, publishing: bool) -> impl DoubleEndedIterator<Item = &Value> {
        self.list["plugins"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(move |p| takes_part(p, publishing))
    }

    fn cache_path(&self, id: &str) -> PathBuf {
        let safe: String = id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        self.settings
            .state_dir
            .join("results")
            .join(format!("{safe}.json"))
    }

    /// Runs one plugin, alone (no other call of this agent's runs meanwhile, though the calls
    /// of two attachments may interleave); answers its result (ADD) or `null` (DEL).
    async fn invoke(
        &self,
        command: &'static str,
        id: &str,
        netns: &str,
        plugin: &Value,
        input: &Value,
    ) -> Result<Value, CniError> {
        use tokio::io::AsyncWriteExt as _;
        let _one = self.one_at_a_time.lock().await;
        let kind = plugin["type"].as_str().unwrap_or_default();
        let program = self.settings.plugin_dir.join(kind);
        let run = |source| CniError::Run {
            plugin: program.clone(),
            source,
        };
        let mut child = tokio::process::Command::new(&program)
            .env_clear()
            .envs(plugin_env(command, id, netns, &self.settings.plugin_dir))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(run)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.to_string().as_bytes())
                .await
                .map_err(run)?;
        }
        let out = child.wait_with_output().await.map_err(run)?;
        if !out.status.success() {
            return Err(plugin_error(kind, command, &out.stdout, &out.stderr));
        }
        if command != "ADD" {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out.stdout).map_err(|_| CniError::Answer {
            plugin: kind.to_owned(),
            command,
            answer: String::from_utf8_lossy(&out.stdout).into_owned(),
        })
    }
}

/// An attachment's record, as [`Cni`] keeps it on disk.
#[derive(Clone, Copy)]
struct Record<'a> {
    /// The container ID the plugins know the attachment by.
    cni_id: &'a str,
    netns: &'a str,
    runtime: &'a Value,
    result: Option<&'a Value>,
}

impl<'a> Record<'a> {
    fn new(cni_id: &'a str, netns: &'a str, runtime: &'a Value, result: Option<&'a Value>) -> Self {
        Self {
            cni_id,
            netns,
            runtime,
            result,
        }
    }

    /// The record of `id` as read back; records from before warm namespaces name neither the
    /// container ID nor the namespace (the task's ID and the namespace named after it).
    fn from_cached(id: &'a str, cached: &'a Value) -> Self {
        Self {
            cni_id: cached["cniId"].as_str().unwrap_or(id),
            netns: cached["netns"].as_str().unwrap_or_default(),
            runtime: &cached["runtimeConfig"],
            result: Some(&cached["result"]).filter(|r| !r.is_null()),
        }
    }

    fn to_json(self) -> Value {
        json!({
            "cniId": self.cni_id,
            "netns": self.netns,
            "result": self.result,
            "runtimeConfig": self.runtime,
        })
    }
}

/// The environment of a plugin call (nothing else of the agent's: `env_clear`).
pub fn plugin_env(
    command: &str,
    id: &str,
    netns: &str,
    plugin_dir: &Path,
) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_COMMAND", command.to_owned()),
        ("CNI_CONTAINERID", id.to_owned()),
        ("CNI_NETNS", netns.to_owned()),
        ("CNI_IFNAME", IFNAME.to_owned()),
        ("CNI_PATH", plugin_dir.display().to_string()),
        // iptables, which portmap and firewall run, is looked up on the PATH.
        ("PATH", crate::spec::DEFAULT_PATH.to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> NetworkSettings {
        NetworkSettings {
            bridge: "berth0".into(),
            subnet: "10.88.0.0/24".parse().expect("subnet"),
            plugin_dir: DEFAULT_PLUGIN_DIR.into(),
            state_dir: "/var/lib/berth/cni".into(),
            host_address: Ipv4Addr::UNSPECIFIED,
            warm: 0,
        }
    }

    #[test]
    fn a_subnet_keeps_its_first_address_for_the_bridge_and_its_last_eighth_for_services() {
        let s: Subnet = "10.220.0.0/16".parse().expect("valid");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 220, 0, 1));
        let services = s.service_addresses();
        assert_eq!(
            (
                Ipv4Addr::from(*services.start()),
                Ipv4Addr::from(*services.end())
            ),
            (
                Ipv4Addr::new(10, 220, 254, 255),
                Ipv4Addr::new(10, 220, 255, 254)
            )
        );
        assert_eq!(s.last_task_address(), Ipv4Addr::new(10, 220, 254, 254));
        let small: Subnet = "10.221.3.0/24".parse().expect("valid");
        assert_eq!(small.last_task_address(), Ipv4Addr::new(10, 221, 3, 222));
        assert_eq!(small.service_addresses().count(), 32);
        let tiny: Subnet = "10.0.0.0/28".parse().expect("valid");
        assert_eq!(tiny.service_addresses().count(), 4);
        assert_eq!(tiny.last_task_address(), Ipv4Addr::new(10, 0, 0, 10));
    }

    #[test]
    fn bridge_names_fit_linux_interface_names() {
        assert_eq!(bridge_name("berth0").as_deref(), Ok("berth0"));
        assert!(bridge_name("").is_err());
        assert!(bridge_name("a-very-long-bridge").is_err());
        assert!(bridge_name("br 0").is_err());
    }

    #[test]
    fn subnets_are_network_addresses_with_a_usable_prefix() {
        let s: Subnet = "10.88.0.0/24".parse().expect("valid");
        assert_eq!(
            (s.network, s.prefix, s.to_string().as_str()),
            (Ipv4Addr::new(10, 88, 0, 0), 24, "10.88.0.0/24")
        );
        for (bad, why) in [
            ("10.88.0.0", "expected ADDRESS/PREFIX"),
            ("10.88.0/24", "is not an IPv4 address"),
            ("10.88.0.0/29", "between 8 and 28"),
            ("10.88.0.7/24", "did you mean 10.88.0.0/24?"),
        ] {
            let err = bad.parse::<Subnet>().expect_err(bad).to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn the_list_bridges_masquerades_allocates_from_the_subnet_and_maps_ports() {
        let list = network_list(&settings());
        assert_eq!(list["name"], "berth-berth0");
        let types: Vec<&str> = list["plugins"]
            .as_array()
            .expect("plugins")
            .iter()
            .filter_map(|p| p["type"].as_str())
            .collect();
        assert_eq!(types, ["bridge", "portmap", "firewall"]);
        let bridge = &list["plugins"][0];
        assert_eq!(
            (bridge["bridge"].as_str(), bridge["ipMasq"].as_bool()),
            (Some("berth0"), Some(true))
        );
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], "10.88.0.0/24");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["rangeEnd"], "10.88.0.222");
        assert_eq!(bridge["ipam"]["dataDir"], "/var/lib/berth/cni/ipam");
    }

    #[test]
    fn each_plugin_gets_the_list_s_name_its_capabilities_and_the_result_so_far() {
        let list = network_list(&settings());
        let ports = [PortBinding {
            host_port: 30_001,
            container_port: 8080,
            protocol: Protocol::Tcp,
        }];
        let runtime = runtime_config(&ports);
        let bridge = plugin_input(&list, &list["plugins"][0], &runtime, None);
        assert_eq!(
            (bridge["name"].as_str(), bridge["cniVersion"].as_str()),
            (Some("berth-berth0"), Some(CNI_VERSION))
        );
        assert!(
            bridge.get("runtimeConfig").is_none(),
            "the bridge declares no capability"
        );
        assert!(bridge.get("prevResult").is_none());

        let prev = json!({"cniVersion": CNI_VERSION, "ips": [{"address": "10.88.0.5/24"}]});
        let portmap = plugin_input(&list, &list["plugins"][1], &runtime, Some(&prev));
        assert_eq!(
            portmap["runtimeConfig"]["portMappings"],
            json!([{"hostPort": 30_001, "containerPort": 8080, "protocol": "tcp"}])
        );
        assert_eq!(portmap["prevResult"], prev);
        assert_eq!(task_address(&prev), Some(Ipv4Addr::new(10, 88, 0, 5)));
        assert_eq!(task_address(&json!({"ips": []})), None);

        let env = plugin_env(
            "DEL",
            "t1",
            "/run/netns/berth-t1",
            Path::new("/usr/lib/cni"),
        );
        assert!(env.contains(&("CNI_COMMAND", "DEL".into())));
        assert!(env.contains(&("CNI_IFNAME", IFNAME.into())));
    }

    #[test]
    fn a_plugin_s_error_says_its_code_message_and_details() {
        let out = br#"{"cniVersion":"1.0.0","code":7,"msg":"failed to find plugin","details":"exec: not found"}"#;
        let e = plugin_error("portmap", "ADD", out, b"");
        assert_eq!(
            e.to_string(),
            "CNI plugin portmap (ADD) failed with code 7: failed to find plugin: exec: not found"
        );
        let e = plugin_error("bridge", "DEL", b"", b"panic: boom\n");
        assert_eq!(
            e.to_string(),
            "CNI plugin bridge (DEL) failed with code 0: panic: boom"
        );
    }

    #[tokio::test]
    async fn an_attachment_is_recorded_before_any_plugin_runs_until_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cni = Cni::new(NetworkSettings {
            // No plugins here: DEL of a plugin that cannot run fails, and the record stays.
            plugin_dir: dir.path().join("no-plugins"),
            state_dir: dir.path().to_owned(),
            ..settings()
        });
        let ports = [PortBinding {
            host_port: 49_153,
            container_port: 8080,
            protocol: Protocol::Tcp,
        }];
        cni.prepare("task-1", "/run/netns/berth-task1", &ports)
            .expect("recorded");
        assert_eq!(cni.attached(), ["task-1"]);
        assert_eq!(
            cni.attachment("task-1"),
            Some(Attachment {
                address: None,
                ports: ports.to_vec(),
                netns: Some("/run/netns/berth-task1".into()),
            })
        );
        assert_eq!(cni.attachment("task-2"), None);
        let err = cni
            .detach("task-1", "/run/netns/gone")
            .await
            .expect_err("no plugins");
        assert!(err.to_string().contains("run CNI plugin"), "{err}");
        assert_eq!(cni.attached(), ["task-1"], "kept until forgotten");
        cni.forget("task-1").expect("forgotten");
        assert!(cni.attached().is_empty());
        cni.prepare("task-1", "/run/netns/berth-task1", &ports)
            .expect("recorded");
        // A failed ADD is undone and forgotten.
        let err = cni
            .add("task-3", "/run/netns/gone", &[])
            .await
            .expect_err("no plugins");
        assert!(err.to_string().contains("run CNI plugin"), "{err}");
        assert_eq!(cni.attached(), ["task-1"]);
    }

    #[test]
    fn portmap_runs_only_for_a_task_that_publishes_ports() {
        let list = network_list(&settings());
        let types = |publishing| -> Vec<&str> {
            list["plugins"]
                .as_array()
                .expect("plugins")
                .iter()
                .filter(|p| takes_part(p, publishing))
                .filter_map(|p| p["type"].as_str())
                .collect()
        };
        assert_eq!(types(true), ["bridge", "portmap", "firewall"]);
        assert_eq!(types(false), ["bridge", "firewall"]);
    }

    #[tokio::test]
    async fn a_warm_attachment_becomes_a_task_s_whole_and_keeps_its_plugins_id_and_namespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cni = Cni::new(NetworkSettings {
            plugin_dir: dir.path().join("no-plugins"),
            state_dir: dir.path().to_owned(),
            ..settings()
        });
        let result = json!({"cniVersion": CNI_VERSION, "ips": [{"address": "10.88.0.7/24"}]});
        // What a finished warm ADD records.
        let runtime = runtime_config(&[]);
        let warm = Record::new("warm-1", "/run/netns/berth-warm1", &runtime, Some(&result));
        cni.record("warm-1", &warm).expect("recorded");
        cni.adopt("warm-1", "task-9").expect("adopted");
        assert_eq!(
            cni.attached(),
            ["task-9"],
            "the warm record is the task's now"
        );
        assert_eq!(
            cni.attachment("task-9"),
            Some(Attachment {
                address: Some(Ipv4Addr::new(10, 88, 0, 7)),
                ports: Vec::new(),
                netns: Some("/run/netns/berth-warm1".into()),
            })
        );
        let cached = cni.cached("task-9").expect("record");
        assert_eq!(Record::from_cached("task-9", &cached).cni_id, "warm-1");
        // Nothing to publish runs no plugin.
        cni.publish("task-9", &[]).await.expect("no ports");
        // Ports are recorded before portmap runs: its failure leaves them for the detach.
        let ports = [PortBinding {
            host_port: 49_200,
            container_port: 80,
            protocol: Protocol::Tcp,
        }];
        let err = cni.publish("task-9", &ports).await.expect_err("no plugins");
        assert!(err.to_string().contains("portmap"), "{err}");
        let after = cni.attachment("task-9").expect("kept");
        assert_eq!(
            (after.address, after.ports),
            (Some(Ipv4Addr::new(10, 88, 0, 7)), ports.to_vec())
        );
        // An attachment that is gone cannot be taken twice.
        assert!(cni.adopt("warm-1", "task-10").is_err());
        // Records from before warm namespaces name neither: the task's own are used.
        let old = json!({"result": result, "runtimeConfig": runtime});
        let r = Record::from_cached("task-1", &old);
        assert_eq!((r.cni_id, r.netns), ("task-1", ""));
    }
}
