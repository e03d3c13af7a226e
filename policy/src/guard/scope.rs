//! Which parts of a request a guard scans: its `scopes`.
//!
//! Every prompt text has one scope (or, when it cannot be told, all of them), and a guard scans
//! only the texts whose scope it lists:
//!
//! | scope | chat completions | completions / embeddings |
//! |---|---|---|
//! | `system` | content of `role: system` and `role: developer` messages | - |
//! | `user` | content of `role: user` messages | all of `prompt` / `input` |
//! | `assistant` | content of `role: assistant` messages | - |
//! | `tool_call_arguments` | `tool_calls[].function.arguments`, `tool_calls[].custom.input`, legacy `function_call.arguments` | - |
//! | `tool_results` | content of `role: tool` and legacy `role: function` messages | - |
//!
//! A message whose role is missing, not a string, repeated with different values or not one of
//! these is in every scope: no guard skips what it cannot place.

use std::fmt;

/// One part of a request a guard may limit itself to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuardScope {
    System,
    User,
    Assistant,
    ToolCallArguments,
    ToolResults,
}

impl GuardScope {
    /// Every scope, in the order their names are listed in messages.
    pub const ALL: [GuardScope; 5] = [
        GuardScope::System,
        GuardScope::User,
        GuardScope::Assistant,
        GuardScope::ToolCallArguments,
        GuardScope::ToolResults,
    ];

    pub fn name(self) -> &'static str {
        match self {
            GuardScope::System => "system",
            GuardScope::User => "user",
            GuardScope::Assistant => "assistant",
            GuardScope::ToolCallArguments => "tool_call_arguments",
            GuardScope::ToolResults => "tool_results",
        }
    }

    pub fn from_name(name: &str) -> Option<GuardScope> {
        GuardScope::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The names of all scopes, comma-separated (for error messages).
    pub fn names() -> String {
        GuardScope::ALL.map(GuardScope::name).join(", ")
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for GuardScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`GuardScope`]s: what a guard scans, or where a text is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ScopeSet(u8);

impl ScopeSet {
    pub const NONE: ScopeSet = ScopeSet(0);
    pub const ALL: ScopeSet = ScopeSet(0b1_1111);

    pub fn of(scope: GuardScope) -> ScopeSet {
        ScopeSet(scope.bit())
    }

    pub fn with(self, scope: GuardScope) -> ScopeSet {
        ScopeSet(self.0 | scope.bit())
    }

    pub fn union(self, other: ScopeSet) -> ScopeSet {
        ScopeSet(self.0 | other.0)
    }

    pub fn contains(self, scope: GuardScope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn intersects(self, other: ScopeSet) -> bool {
        self.0 & other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The scope of a chat message's content by its `role` (`None`: the role is missing or
    /// cannot be read), every scope for a role Gantry does not know.
    pub(crate) fn of_role(role: Option<&str>) -> ScopeSet {
        match role {
            Some("system" | "developer") => ScopeSet::of(GuardScope::System),
            Some("user") => ScopeSet::of(GuardScope::User),
            Some("assistant") => ScopeSet::of(GuardScope::Assistant),
            Some("tool" | "function") => ScopeSet::of(GuardScope::ToolResults),
            _ => ScopeSet::ALL,
        }
    }
}

impl fmt::Debug for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(GuardScope::ALL.iter().filter(|s| self.contains(**s)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sets() {
        for s in GuardScope::ALL {
            assert_eq!(GuardScope::from_name(s.name()), Some(s));
            assert!(ScopeSet::ALL.contains(s));
            assert!(!ScopeSet::NONE.contains(s));
        }
        assert_eq!(GuardScope::from_name("prompt"), None);
        assert_eq!(
            GuardScope::names(),
            "system, user, assistant, tool_call_arguments, tool_results"
        );
        let set = ScopeSet::of(GuardScope::User).with(GuardScope::ToolResults);
        assert!(set.intersects(ScopeSet::of_role(Some("tool"))));
        assert!(!set.intersects(ScopeSet::of_role(Some("developer"))));
        assert!(set.intersects(ScopeSet::of_role(Some("critic"))));
        assert!(set.intersects(ScopeSet::of_role(None)));
        assert_eq!(format!("{set:?}"), "{User, ToolResults}");
        assert!(ScopeSet::NONE.is_empty());
        assert_eq!(ScopeSet::NONE.union(set), set);
    }
}
