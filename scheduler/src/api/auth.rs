//! Roles from the design (`Carga:viewer`, `editor`, `approver`, `admin`) and what each may do.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads configuration, run history and queue state.
    Viewer,
    /// Creates and changes dataset configuration, enables/disables, triggers runs.
    Editor,
    /// Approves configuration before it runs; triggers runs.
    Approver,
    /// Everything, including deleting configuration and reading the audit log.
    Admin,
}

impl Role {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().trim_start_matches("Carga:") {
            "viewer" => Some(Role::Viewer),
            "editor" => Some(Role::Editor),
            "approver" => Some(Role::Approver),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Approver => "approver",
            Role::Admin => "admin",
        }
    }
}

/// The operations the API checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    WriteConfig,
    Approve,
    Trigger,
    Delete,
    ReadAudit,
}

impl Action {
    pub fn allows(self, role: Role) -> bool {
        use Role::*;
        match self {
            Action::Read => true,
            Action::WriteConfig => matches!(role, Editor | Admin),
            Action::Approve => matches!(role, Approver | Admin),
            Action::Trigger => matches!(role, Editor | Approver | Admin),
            Action::Delete | Action::ReadAudit => role == Admin,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::WriteConfig => "write_config",
            Action::Approve => "approve",
            Action::Trigger => "trigger",
            Action::Delete => "delete",
            Action::ReadAudit => "read_audit",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_matrix() {
        let expect = [
            (Action::Read, [true, true, true, true]),
            (Action::WriteConfig, [false, true, false, true]),
            (Action::Approve, [false, false, true, true]),
            (Action::Trigger, [false, true, true, true]),
            (Action::Delete, [false, false, false, true]),
            (Action::ReadAudit, [false, false, false, true]),
        ];
        let roles = [Role::Viewer, Role::Editor, Role::Approver, Role::Admin];
        for (action, allowed) in expect {
            for (role, allowed) in roles.iter().zip(allowed) {
                assert_eq!(action.allows(*role), allowed, "{action:?} by {role:?}");
            }
        }
        assert_eq!(Role::parse("Carga:editor"), Some(Role::Editor));
        assert_eq!(Role::parse("root"), None);
    }
}
