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
    /// Test a connection: read a few rows of a dataset's source with its credentials.
    Preview,
    /// Dashboard job actions: run a failed or dead job again now; stop a queued or running job;
    /// remove a finished job from the history and the dead set.
    RetryJob,
    KillJob,
    DeleteJob,
    /// Query the committed raw zone (decrypted) with SQL.
    Sql,
    /// Write or delete a connection in the store (an editor only their own).
    WriteConnection,
    /// Log in with a stored connection to see that it answers.
    TestConnection,
    /// Upload a file for a dataset (an editor and up; each their own uploads).
    Upload,
    /// Subscribe, change or delete webhooks (their secrets are written here).
    ManageWebhooks,
    /// Read the webhook subscriptions and their delivery log.
    ReadWebhooks,
}

impl Action {
    pub fn allows(self, role: Role) -> bool {
        use Role::*;
        match self {
            Action::Read => true,
            Action::WriteConfig | Action::WriteConnection => matches!(role, Editor | Admin),
            Action::Approve => matches!(role, Approver | Admin),
            Action::Trigger
            | Action::Preview
            | Action::RetryJob
            | Action::TestConnection
            | Action::Upload => {
                matches!(role, Editor | Approver | Admin)
            }
            Action::KillJob | Action::Sql | Action::ReadWebhooks => {
                matches!(role, Approver | Admin)
            }
            Action::Delete | Action::ReadAudit | Action::DeleteJob | Action::ManageWebhooks => {
                role == Admin
            }
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
            Action::Preview => "preview",
            Action::RetryJob => "retry_job",
            Action::KillJob => "kill_job",
            Action::DeleteJob => "delete_job",
            Action::Sql => "sql",
            Action::WriteConnection => "write_connection",
            Action::TestConnection => "test_connection",
            Action::Upload => "upload",
            Action::ManageWebhooks => "manage_webhooks",
            Action::ReadWebhooks => "read_webhooks",
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
            (Action::Preview, [false, true, true, true]),
            (Action::RetryJob, [false, true, true, true]),
            (Action::KillJob, [false, false, true, true]),
            (Action::DeleteJob, [false, false, false, true]),
            (Action::Sql, [false, false, true, true]),
            (Action::WriteConnection, [false, true, false, true]),
            (Action::TestConnection, [false, true, true, true]),
            (Action::Upload, [false, true, true, true]),
            (Action::ManageWebhooks, [false, false, false, true]),
            (Action::ReadWebhooks, [false, false, true, true]),
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
