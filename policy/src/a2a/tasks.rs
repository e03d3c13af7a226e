//! Tasks bound to the caller who created them: the gateway remembers, per process, which
//! caller's request created each task (from the answers to `SendMessage` and
//! `SendStreamingMessage`), and a request about a task another caller created is answered as
//! if the task did not exist. A2A task ids are capabilities the agent hands out; without this,
//! anyone who learns one can read or cancel someone else's task through the gateway.

use std::collections::{HashMap, VecDeque};

use serde_json::Value;

/// Tasks remembered at most; the oldest are forgotten first.
pub const MAX_TRACKED_TASKS: usize = 100_000;

/// Task → the caller (`McpCaller::binding`) whose request created it. Plain data: the adapter
/// keeps it behind a lock and never across an `.await`.
#[derive(Debug, Default)]
pub struct TaskOwners {
    owners: HashMap<(String, String), String>,
    order: VecDeque<(String, String)>,
}

impl TaskOwners {
    /// Records that `owner` created `task` on `agent` (a task is recorded once: the creator).
    pub fn record(&mut self, agent: &str, task: &str, owner: &str) {
        let key = (agent.to_string(), task.to_string());
        if self.owners.contains_key(&key) {
            return;
        }
        if self.order.len() >= MAX_TRACKED_TASKS {
            if let Some(oldest) = self.order.pop_front() {
                self.owners.remove(&oldest);
            }
        }
        self.owners.insert(key.clone(), owner.to_string());
        self.order.push_back(key);
    }

    pub fn owner(&self, agent: &str, task: &str) -> Option<&str> {
        self.owners
            .get(&(agent.to_string(), task.to_string()))
            .map(String::as_str)
    }
}

/// The id of the task a send's answer created, if it names one: a JSON-RPC response or REST
/// body (1.0 `{task: {id}}`, 0.3 `{kind: "task", id}`), or one streamed event (1.0 `{task}`
/// or `{statusUpdate: {taskId}}`, 0.3 `kind: "task"` / `"status-update"`).
pub fn created_task(answer: &Value) -> Option<String> {
    let body = answer.get("result").unwrap_or(answer);
    let id = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    if let Some(task) = body.get("task") {
        return id(task.get("id"));
    }
    if let Some(update) = body
        .get("statusUpdate")
        .or_else(|| body.get("artifactUpdate"))
    {
        return id(update.get("taskId"));
    }
    match body.get("kind").and_then(Value::as_str) {
        Some("task") => id(body.get("id")),
        Some("status-update" | "artifact-update") => id(body.get("taskId")),
        // A message answer may belong to a task too.
        Some("message") => id(body.get("taskId")),
        _ => body.get("message").and_then(|m| id(m.get("taskId"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_creator_is_remembered_and_the_oldest_forgotten() {
        let mut owners = TaskOwners::default();
        owners.record("echo", "t1", "api_key:alice");
        owners.record("echo", "t1", "api_key:bob");
        assert_eq!(owners.owner("echo", "t1"), Some("api_key:alice"));
        assert_eq!(owners.owner("other", "t1"), None);
        for i in 0..MAX_TRACKED_TASKS {
            owners.record("echo", &format!("n{i}"), "x");
        }
        assert_eq!(owners.owner("echo", "t1"), None);
        assert_eq!(owners.owner("echo", "n1"), Some("x"));
    }

    #[test]
    fn answers_of_both_versions_name_their_task() {
        for (answer, task) in [
            (
                json!({"jsonrpc":"2.0","id":1,"result":{"task":{"id":"a","status":{}}}}),
                Some("a"),
            ),
            (json!({"task":{"id":"b"}}), Some("b")),
            (json!({"result":{"statusUpdate":{"taskId":"c"}}}), Some("c")),
            (json!({"result":{"kind":"task","id":"d"}}), Some("d")),
            (
                json!({"result":{"kind":"status-update","taskId":"e"}}),
                Some("e"),
            ),
            (json!({"result":{"message":{"messageId":"m"}}}), None),
            (json!({"error":{"code":-32001}}), None),
        ] {
            assert_eq!(created_task(&answer).as_deref(), task, "{answer}");
        }
    }
}
