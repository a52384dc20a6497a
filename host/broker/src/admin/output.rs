//! What `mqadmin` prints. Every command turns its answer into rows (plain structs); a row
//! renders as one line of an aligned table (RocketMQ's `#Header` style) or, with `--json`,
//! the same rows serialize as JSON for scripts. Building rows is separate from RPCs so the
//! formatting is tested without a cluster.

use serde::Serialize;
use wasmq_proto::wasmq::admin as pb_admin;
use wasmq_proto::wasmq::namesrv as pb_ns;

/// Table cells wider than this are cut (with `…`); JSON always has the full value.
pub const CELL_CHARS_MAX: usize = 64;

/// One line of a table.
pub trait Row: Serialize {
    fn headers() -> &'static [&'static str];
    fn cells(&self) -> Vec<String>;
}

/// Renders rows as a table: a `#Header` line, then one line per row, columns aligned and
/// separated by two spaces, no trailing spaces.
pub fn table<R: Row>(rows: &[R]) -> String {
    let headers: Vec<String> = R::headers().iter().map(|h| format!("#{h}")).collect();
    let cells: Vec<Vec<String>> = rows.iter().map(|r| r.cells().into_iter().map(|c| cut(&c)).collect()).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for line in &cells {
        assert_eq!(line.len(), widths.len(), "row has a cell per header");
        for (w, c) in widths.iter_mut().zip(line) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for line in std::iter::once(&headers).chain(cells.iter()) {
        let mut text = String::new();
        for (i, (cell, width)) in line.iter().zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            let pad = width - cell.chars().count();
            text.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// Pretty JSON with a trailing newline.
pub fn json<T: Serialize + ?Sized>(value: &T) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("rows serialize");
    text.push('\n');
    text
}

fn cut(cell: &str) -> String {
    // Newlines and tabs would break the columns.
    let flat: String = cell.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if flat.chars().count() <= CELL_CHARS_MAX {
        return flat;
    }
    let mut short: String = flat.chars().take(CELL_CHARS_MAX - 1).collect();
    short.push('…');
    short
}

pub fn ns_role_name(role: i32) -> &'static str {
    pb_ns::Role::try_from(role).map_or("UNKNOWN", |r| match r {
        pb_ns::Role::Unspecified => "UNKNOWN",
        pb_ns::Role::Leader => "LEADER",
        pb_ns::Role::Follower => "FOLLOWER",
        pb_ns::Role::Candidate => "CANDIDATE",
        pb_ns::Role::Standalone => "STANDALONE",
    })
}

pub fn admin_role_name(role: i32) -> &'static str {
    pb_admin::Role::try_from(role).map_or("UNKNOWN", |r| match r {
        pb_admin::Role::Unspecified => "UNKNOWN",
        pb_admin::Role::Leader => "LEADER",
        pb_admin::Role::Follower => "FOLLOWER",
        pb_admin::Role::Candidate => "CANDIDATE",
        pb_admin::Role::Standalone => "STANDALONE",
    })
}

/// `1.2s`, `350ms`: heartbeat ages are read by people.
fn age(ms: u64) -> String {
    if ms < 1000 { format!("{ms}ms") } else { format!("{}.{}s", ms / 1000, (ms % 1000) / 100) }
}

fn bytes_human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

// ---- clusterList ----------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRow {
    pub cluster_name: String,
    pub broker_name: String,
    pub node_id: String,
    pub addr: String,
    pub raft_addr: String,
    pub version: String,
    pub role: String,
    pub term: u64,
    pub committed_index: u64,
    pub last_heartbeat_age_ms: u64,
    pub topic_count: u32,
    /// Which name server reported this node (several may be asked).
    pub namesrv: String,
}

impl Row for ClusterRow {
    fn headers() -> &'static [&'static str] {
        &["Cluster Name", "Broker Name", "BID", "Addr", "Version", "Role", "Term", "CommitIndex", "Heartbeat"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.cluster_name.clone(),
            self.broker_name.clone(),
            self.node_id.clone(),
            self.addr.clone(),
            self.version.clone(),
            self.role.clone(),
            self.term.to_string(),
            self.committed_index.to_string(),
            age(self.last_heartbeat_age_ms),
        ]
    }
}

pub fn cluster_rows(namesrv: &str, info: &pb_ns::GetClusterInfoResponse) -> Vec<ClusterRow> {
    info.brokers
        .iter()
        .flat_map(|group| {
            group.nodes.iter().map(move |node| ClusterRow {
                cluster_name: group.cluster_name.clone(),
                broker_name: group.broker_name.clone(),
                node_id: node.node_id.clone(),
                addr: node.client_addr.clone(),
                raft_addr: node.raft_addr.clone(),
                version: node.version.clone(),
                role: ns_role_name(node.role).to_string(),
                term: node.term,
                committed_index: node.committed_index,
                last_heartbeat_age_ms: node.last_heartbeat_age_ms,
                topic_count: node.topic_count,
                namesrv: namesrv.to_string(),
            })
        })
        .collect()
}

// ---- topicList --------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicListRow {
    pub topic: String,
    pub cluster_names: Vec<String>,
    pub broker_names: Vec<String>,
}

impl Row for TopicListRow {
    fn headers() -> &'static [&'static str] {
        &["Topic", "Cluster Name", "Broker Name"]
    }
    fn cells(&self) -> Vec<String> {
        vec![self.topic.clone(), self.cluster_names.join(","), self.broker_names.join(",")]
    }
}

pub fn topic_list_rows(list: &pb_ns::GetTopicListResponse) -> Vec<TopicListRow> {
    list.topics
        .iter()
        .map(|t| TopicListRow {
            topic: t.name.clone(),
            cluster_names: t.cluster_names.clone(),
            broker_names: t.broker_names.clone(),
        })
        .collect()
}

// ---- updateTopic ------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateTopicRow {
    pub broker_addr: String,
    pub topic: String,
    pub read_queue_nums: u32,
    pub write_queue_nums: u32,
    pub perm: u32,
    pub created: bool,
}

impl Row for UpdateTopicRow {
    fn headers() -> &'static [&'static str] {
        &["Broker Addr", "Topic", "Read", "Write", "Perm", "Result"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.broker_addr.clone(),
            self.topic.clone(),
            self.read_queue_nums.to_string(),
            self.write_queue_nums.to_string(),
            self.perm.to_string(),
            if self.created { "created" } else { "updated" }.to_string(),
        ]
    }
}

pub fn update_topic_row(broker_addr: &str, answer: &pb_admin::UpdateTopicResponse) -> UpdateTopicRow {
    let topic = answer.topic.clone().unwrap_or_default();
    UpdateTopicRow {
        broker_addr: broker_addr.to_string(),
        topic: topic.name,
        read_queue_nums: topic.read_queue_nums,
        write_queue_nums: topic.write_queue_nums,
        perm: topic.perm,
        created: !answer.existed,
    }
}

// ---- topicStatus ------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatusRow {
    pub broker_name: String,
    pub queue_id: u32,
    pub min_offset: u64,
    pub max_offset: u64,
    pub last_update_timestamp_ms: i64,
}

impl Row for TopicStatusRow {
    fn headers() -> &'static [&'static str] {
        &["Broker Name", "QID", "Min Offset", "Max Offset", "Last Updated"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.broker_name.clone(),
            self.queue_id.to_string(),
            self.min_offset.to_string(),
            self.max_offset.to_string(),
            timestamp(self.last_update_timestamp_ms),
        ]
    }
}

pub fn topic_status_rows(status: &pb_admin::TopicStatusResponse) -> Vec<TopicStatusRow> {
    status
        .queues
        .iter()
        .map(|q| TopicStatusRow {
            broker_name: status.broker_name.clone(),
            queue_id: q.queue_id,
            min_offset: q.min_offset,
            max_offset: q.max_offset,
            last_update_timestamp_ms: q.last_update_timestamp_ms,
        })
        .collect()
}

/// UTC `YYYY-MM-DD HH:MM:SS.mmm`; `-` for 0 (never).
pub fn timestamp(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{millis:03}", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

// ---- sendMessage ------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SendRow {
    pub topic: String,
    pub broker_name: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub message_id: String,
    pub commit_index: u64,
    pub status: String,
}

impl Row for SendRow {
    fn headers() -> &'static [&'static str] {
        &["Broker Name", "QID", "Queue Offset", "Send Result", "MsgId"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.broker_name.clone(),
            self.queue_id.to_string(),
            self.queue_offset.to_string(),
            self.status.clone(),
            self.message_id.clone(),
        ]
    }
}

pub fn send_row(answer: &pb_admin::SendMessageResponse) -> SendRow {
    SendRow {
        topic: answer.topic.clone(),
        broker_name: answer.broker_name.clone(),
        queue_id: answer.queue_id,
        queue_offset: answer.queue_offset,
        message_id: answer.message_id.clone(),
        commit_index: answer.commit_index,
        status: "SEND_OK".into(),
    }
}

// ---- consumeMessage / queryMsgById -------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageRow {
    pub message_id: String,
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub tag: String,
    pub keys: Vec<String>,
    pub properties: std::collections::BTreeMap<String, String>,
    pub born_timestamp_ms: i64,
    pub store_timestamp_ms: i64,
    pub born_host: String,
    pub commit_index: u64,
    /// Body as UTF-8 (lossy); `body_hex` carries the exact bytes when it is not UTF-8.
    pub body: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_hex: Option<String>,
    pub body_size: usize,
}

impl Row for MessageRow {
    fn headers() -> &'static [&'static str] {
        &["MsgId", "QID", "Offset", "Tag", "Keys", "Store Time", "Body"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.message_id.clone(),
            self.queue_id.to_string(),
            self.queue_offset.to_string(),
            self.tag.clone(),
            self.keys.join(" "),
            timestamp(self.store_timestamp_ms),
            self.body.clone(),
        ]
    }
}

pub fn message_row(m: &pb_admin::Message) -> MessageRow {
    let (body, body_hex) = match std::str::from_utf8(&m.body) {
        Ok(text) => (text.to_string(), None),
        Err(_) => (String::from_utf8_lossy(&m.body).into_owned(), Some(hex::encode(&m.body))),
    };
    MessageRow {
        message_id: m.message_id.clone(),
        topic: m.topic.clone(),
        queue_id: m.queue_id,
        queue_offset: m.queue_offset,
        tag: m.tag.clone(),
        keys: m.keys.clone(),
        properties: m.properties.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        born_timestamp_ms: m.born_timestamp_ms,
        store_timestamp_ms: m.store_timestamp_ms,
        born_host: m.born_host.clone(),
        commit_index: m.commit_index,
        body,
        body_hex,
        body_size: m.body.len(),
    }
}

/// queryMsgById prints one message as `Key: value` lines, like RocketMQ.
pub fn message_details(m: &MessageRow) -> String {
    let mut props: Vec<String> = m.properties.iter().map(|(k, v)| format!("{k}={v}")).collect();
    props.sort();
    let lines = [
        ("Topic", m.topic.clone()),
        ("Tag", m.tag.clone()),
        ("Keys", m.keys.join(" ")),
        ("Queue ID", m.queue_id.to_string()),
        ("Queue Offset", m.queue_offset.to_string()),
        ("Commit Index", m.commit_index.to_string()),
        ("Born Timestamp", timestamp(m.born_timestamp_ms)),
        ("Store Timestamp", timestamp(m.store_timestamp_ms)),
        ("Born Host", m.born_host.clone()),
        ("Properties", props.join(" ")),
        ("Body Size", m.body_size.to_string()),
        ("Message Body", m.body.clone()),
    ];
    let mut out = format!("{:<16} {}\n", "MsgId:", m.message_id);
    for (k, v) in lines {
        out.push_str(format!("{:<16} {v}", format!("{k}:")).trim_end());
        out.push('\n');
    }
    out
}

// ---- consumerProgress -------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressRow {
    pub group: String,
    pub topic: String,
    pub broker_name: String,
    pub queue_id: u32,
    pub broker_offset: u64,
    pub consumer_offset: u64,
    pub diff: u64,
}

impl Row for ProgressRow {
    fn headers() -> &'static [&'static str] {
        &["Group", "Topic", "Broker Name", "QID", "Broker Offset", "Consumer Offset", "Diff"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.group.clone(),
            self.topic.clone(),
            self.broker_name.clone(),
            self.queue_id.to_string(),
            self.broker_offset.to_string(),
            self.consumer_offset.to_string(),
            self.diff.to_string(),
        ]
    }
}

pub fn progress_rows(answer: &pb_admin::ConsumerProgressResponse) -> Vec<ProgressRow> {
    answer
        .queues
        .iter()
        .map(|q| ProgressRow {
            group: q.group.clone(),
            topic: q.topic.clone(),
            broker_name: answer.broker_name.clone(),
            queue_id: q.queue_id,
            broker_offset: q.broker_offset,
            consumer_offset: q.consumer_offset,
            diff: q.lag,
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProgressReport {
    pub queues: Vec<ProgressRow>,
    pub diff_total: u64,
}

pub fn progress_report(mut queues: Vec<ProgressRow>) -> ProgressReport {
    queues.sort_by(|a, b| {
        (&a.group, &a.topic, &a.broker_name, a.queue_id).cmp(&(&b.group, &b.topic, &b.broker_name, b.queue_id))
    });
    let diff_total = queues.iter().map(|q| q.diff).sum();
    ProgressReport { queues, diff_total }
}

pub fn progress_text(report: &ProgressReport) -> String {
    format!("{}\nDiff Total: {}\n", table(&report.queues), report.diff_total)
}

// ---- brokerStatus -----------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRow {
    pub node_id: String,
    pub raft_addr: String,
    pub match_index: u64,
    pub lag_entries: u64,
}

impl Row for PeerRow {
    fn headers() -> &'static [&'static str] {
        &["Peer", "Raft Addr", "Match Index", "Lag"]
    }
    fn cells(&self) -> Vec<String> {
        vec![self.node_id.clone(), self.raft_addr.clone(), self.match_index.to_string(), self.lag_entries.to_string()]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerStatusReport {
    pub addr: String,
    pub cluster_name: String,
    pub broker_name: String,
    pub node_id: String,
    pub role: String,
    pub term: u64,
    pub leader_id: String,
    pub last_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub version: String,
    pub uptime_ms: u64,
    pub store_dir: String,
    pub disk_used_bytes: u64,
    pub disk_total_bytes: u64,
    pub disk_free_bytes: u64,
    pub peers: Vec<PeerRow>,
    pub topics: Vec<TopicRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicRow {
    pub topic: String,
    pub read_queue_nums: u32,
    pub write_queue_nums: u32,
    pub perm: u32,
}

impl Row for TopicRow {
    fn headers() -> &'static [&'static str] {
        &["Topic", "Read", "Write", "Perm"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.topic.clone(),
            self.read_queue_nums.to_string(),
            self.write_queue_nums.to_string(),
            self.perm.to_string(),
        ]
    }
}

pub fn broker_status_report(addr: &str, s: &pb_admin::BrokerStatusResponse) -> BrokerStatusReport {
    BrokerStatusReport {
        addr: addr.to_string(),
        cluster_name: s.cluster_name.clone(),
        broker_name: s.broker_name.clone(),
        node_id: s.node_id.clone(),
        role: admin_role_name(s.role).to_string(),
        term: s.term,
        leader_id: s.leader_id.clone(),
        last_index: s.last_index,
        committed_index: s.committed_index,
        applied_index: s.applied_index,
        version: s.version.clone(),
        uptime_ms: s.uptime_ms,
        store_dir: s.store_dir.clone(),
        disk_used_bytes: s.disk_used_bytes,
        disk_total_bytes: s.disk_total_bytes,
        disk_free_bytes: s.disk_free_bytes,
        peers: s
            .peers
            .iter()
            .map(|p| PeerRow {
                node_id: p.node_id.clone(),
                raft_addr: p.raft_addr.clone(),
                match_index: p.match_index,
                lag_entries: p.lag_entries,
            })
            .collect(),
        topics: s
            .topics
            .iter()
            .map(|t| TopicRow {
                topic: t.name.clone(),
                read_queue_nums: t.read_queue_nums,
                write_queue_nums: t.write_queue_nums,
                perm: t.perm,
            })
            .collect(),
    }
}

/// `key : value` lines (RocketMQ's brokerStatus style), then the peer and topic tables.
pub fn broker_status_text(r: &BrokerStatusReport) -> String {
    let pairs = [
        ("addr", r.addr.clone()),
        ("clusterName", r.cluster_name.clone()),
        ("brokerName", r.broker_name.clone()),
        ("nodeId", r.node_id.clone()),
        ("role", r.role.clone()),
        ("term", r.term.to_string()),
        ("leaderId", r.leader_id.clone()),
        ("lastIndex", r.last_index.to_string()),
        ("committedIndex", r.committed_index.to_string()),
        ("appliedIndex", r.applied_index.to_string()),
        ("version", r.version.clone()),
        ("uptime", age(r.uptime_ms)),
        ("storeDir", r.store_dir.clone()),
        ("diskUsed", bytes_human(r.disk_used_bytes)),
        ("diskFree", bytes_human(r.disk_free_bytes)),
        ("diskTotal", bytes_human(r.disk_total_bytes)),
        ("topicCount", r.topics.len().to_string()),
    ];
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        out.push_str(format!("{k:<width$} : {v}").trim_end());
        out.push('\n');
    }
    if !r.peers.is_empty() {
        out.push('\n');
        out.push_str(&table(&r.peers));
    }
    if !r.topics.is_empty() {
        out.push('\n');
        out.push_str(&table(&r.topics));
    }
    out
}

// ---- pluginList / pluginReload ----------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginRow {
    pub name: String,
    pub kind: String,
    pub order: i32,
    pub topics: Vec<String>,
    pub groups: Vec<String>,
    pub on_error: String,
    pub digest: String,
    pub loaded_at_ms: i64,
    pub calls: u64,
    pub errors: u64,
    pub description: String,
    pub path: String,
}

impl Row for PluginRow {
    fn headers() -> &'static [&'static str] {
        &["Name", "Kind", "Order", "Topics", "Groups", "OnError", "Digest", "Calls", "Errors"]
    }
    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.kind.clone(),
            self.order.to_string(),
            self.topics.join(","),
            self.groups.join(","),
            self.on_error.clone(),
            self.digest.chars().take(12).collect(),
            self.calls.to_string(),
            self.errors.to_string(),
        ]
    }
}

pub fn plugin_rows(list: &pb_admin::PluginListResponse) -> Vec<PluginRow> {
    list.plugins
        .iter()
        .map(|p| PluginRow {
            name: p.name.clone(),
            kind: p.kind.clone(),
            order: p.order,
            topics: p.topics.clone(),
            groups: p.groups.clone(),
            on_error: p.on_error.clone(),
            digest: p.digest.clone(),
            loaded_at_ms: p.loaded_at_ms,
            calls: p.calls,
            errors: p.errors,
            description: p.description.clone(),
            path: p.path.clone(),
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadReport {
    pub addr: String,
    pub loaded: Vec<String>,
    pub removed: Vec<String>,
    pub failed: Vec<String>,
}

pub fn reload_text(r: &ReloadReport) -> String {
    let list = |v: &[String]| {
        if v.is_empty() { "-".to_string() } else { v.join(", ") }
    };
    let mut out = format!(
        "plugin reload on {}: loaded {}, removed {}, failed {}\n",
        r.addr,
        r.loaded.len(),
        r.removed.len(),
        r.failed.len()
    );
    out.push_str(&format!("loaded  : {}\n", list(&r.loaded)));
    out.push_str(&format!("removed : {}\n", list(&r.removed)));
    for failure in &r.failed {
        out.push_str(&format!("FAILED  : {failure}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster_info() -> pb_ns::GetClusterInfoResponse {
        let node = |id: &str, role: pb_ns::Role, age_ms: u64| pb_ns::BrokerNode {
            node_id: id.into(),
            client_addr: format!("127.0.0.1:1091{}", &id[1..]),
            raft_addr: format!("127.0.0.1:4091{}", &id[1..]),
            role: role as i32,
            term: 7,
            committed_index: 1234,
            version: "0.1.0".into(),
            last_heartbeat_age_ms: age_ms,
            topic_count: 3,
        };
        pb_ns::GetClusterInfoResponse {
            brokers: vec![pb_ns::BrokerData {
                cluster_name: "DefaultCluster".into(),
                broker_name: "RaftNode00".into(),
                nodes: vec![node("n0", pb_ns::Role::Leader, 120), node("n1", pb_ns::Role::Follower, 1250)],
            }],
            expiry_ms: 3000,
        }
    }

    #[test]
    fn cluster_list_table_is_aligned() {
        let rows = cluster_rows("127.0.0.1:9876", &cluster_info());
        let text = table(&rows);
        let expected = "\
#Cluster Name   #Broker Name  #BID  #Addr            #Version  #Role     #Term  #CommitIndex  #Heartbeat
DefaultCluster  RaftNode00    n0    127.0.0.1:10910  0.1.0     LEADER    7      1234          120ms
DefaultCluster  RaftNode00    n1    127.0.0.1:10911  0.1.0     FOLLOWER  7      1234          1.2s
";
        assert_eq!(text, expected);
    }

    #[test]
    fn cluster_list_json_has_every_field() {
        let rows = cluster_rows("127.0.0.1:9876", &cluster_info());
        let value: serde_json::Value = serde_json::from_str(&json(&rows)).unwrap();
        let first = &value[0];
        assert_eq!(first["clusterName"], "DefaultCluster");
        assert_eq!(first["brokerName"], "RaftNode00");
        assert_eq!(first["nodeId"], "n0");
        assert_eq!(first["addr"], "127.0.0.1:10910");
        assert_eq!(first["raftAddr"], "127.0.0.1:40910");
        assert_eq!(first["role"], "LEADER");
        assert_eq!(first["term"], 7);
        assert_eq!(first["committedIndex"], 1234);
        assert_eq!(first["lastHeartbeatAgeMs"], 120);
        assert_eq!(first["namesrv"], "127.0.0.1:9876");
        assert_eq!(value[1]["role"], "FOLLOWER");
    }

    #[test]
    fn empty_table_has_header_only() {
        assert_eq!(table::<TopicListRow>(&[]), "#Topic  #Cluster Name  #Broker Name\n");
    }

    #[test]
    fn long_and_multiline_cells_are_cut_in_tables_only() {
        let body = format!("line1\nline2 {}", "x".repeat(200));
        let row = message_row(&pb_admin::Message {
            message_id: "id1".into(),
            body: body.clone().into_bytes(),
            ..Default::default()
        });
        let text = table(std::slice::from_ref(&row));
        let data_line = text.lines().nth(1).unwrap();
        assert!(data_line.ends_with('…'), "{data_line}");
        assert!(data_line.contains("line1 line2"), "{data_line}");
        let value: serde_json::Value = serde_json::from_str(&json(&row)).unwrap();
        assert_eq!(value["body"], body);
        assert!(value.get("bodyHex").is_none());
    }

    #[test]
    fn binary_body_keeps_exact_bytes_as_hex() {
        let row = message_row(&pb_admin::Message { body: vec![0xff, 0x00, 0x41], ..Default::default() });
        assert_eq!(row.body_hex.as_deref(), Some("ff0041"));
        assert_eq!(row.body_size, 3);
    }

    #[test]
    fn progress_totals_and_sorts() {
        let answer = pb_admin::ConsumerProgressResponse {
            broker_name: "g0".into(),
            queues: vec![
                pb_admin::QueueProgress {
                    group: "G".into(),
                    topic: "T".into(),
                    queue_id: 1,
                    broker_offset: 10,
                    consumer_offset: 4,
                    lag: 6,
                },
                pb_admin::QueueProgress {
                    group: "G".into(),
                    topic: "T".into(),
                    queue_id: 0,
                    broker_offset: 5,
                    consumer_offset: 5,
                    lag: 0,
                },
            ],
        };
        let report = progress_report(progress_rows(&answer));
        assert_eq!(report.diff_total, 6);
        assert_eq!(report.queues[0].queue_id, 0);
        let text = progress_text(&report);
        assert!(text.ends_with("\nDiff Total: 6\n"), "{text}");
        let value: serde_json::Value = serde_json::from_str(&json(&report)).unwrap();
        assert_eq!(value["diffTotal"], 6);
        assert_eq!(value["queues"][1]["consumerOffset"], 4);
    }

    #[test]
    fn timestamps_render_in_utc() {
        assert_eq!(timestamp(0), "-");
        assert_eq!(timestamp(1_700_000_000_123), "2023-11-14 22:13:20.123");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29 00:00:00.000");
    }

    #[test]
    fn broker_status_text_lists_peers_and_disk() {
        let status = pb_admin::BrokerStatusResponse {
            broker_name: "g0".into(),
            node_id: "n0".into(),
            role: pb_admin::Role::Leader as i32,
            term: 2,
            committed_index: 99,
            disk_used_bytes: 3 * 1024 * 1024,
            peers: vec![pb_admin::PeerStatus {
                node_id: "n1".into(),
                raft_addr: "127.0.0.1:40911".into(),
                match_index: 97,
                lag_entries: 2,
            }],
            ..Default::default()
        };
        let text = broker_status_text(&broker_status_report("127.0.0.1:10911", &status));
        assert!(text.contains("role           : LEADER\n"), "{text}");
        assert!(text.contains("diskUsed       : 3.0 MiB\n"), "{text}");
        assert!(
            text.contains("#Peer  #Raft Addr       #Match Index  #Lag\nn1     127.0.0.1:40911  97            2\n"),
            "{text}"
        );
    }
}
