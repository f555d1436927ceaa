//! The `imports.members` job: validate each line of an uploaded file and
//! invite its address.
//!
//! The file waits in `import_files`. The job reads it and works through its
//! lines in batches, each in one transaction acting for the requester (who
//! must still hold `invitations:manage`): lines that already have a result
//! are skipped, so a retried or redelivered job resumes where it stopped and
//! never invites anyone twice; the others get a result in `import_rows` in
//! the same transaction as their invitation (and its email job). The last
//! transaction deletes the file and marks the record `succeeded`.
//!
//! Per line: an invalid address or role, or a role that does not exist or
//! that the requester may not grant, is an `error`; an address already met
//! on an earlier line of the file, a member's address, or one with an open
//! invitation is `skipped`; a line for which the plan has no seat left is
//! an `error`; anything else is `invited`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::file::{self, CsvLine};
use super::repo::{self, ImportRow};
use crate::auth::rbac::{act_for, perm};
use crate::core::validate::{Email, RoleName};
use crate::jobs::records::{self, JobState};
use crate::jobs::{Job, JobContext, JobError, RetryPolicy};
use crate::organizations::error::OrgError;
use crate::organizations::model::{CreateInvitation, CreatedInvitation};
use crate::organizations::service::{self as orgs, InviteSettings};

/// Imports one uploaded file; the job id is the id of its record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportMembers {
    pub org_id: Uuid,
    pub requested_by: Uuid,
}

/// Lines per transaction (each holds the org lock while it runs).
pub const BATCH: usize = 100;

/// Longest email or role kept from an invalid line.
const MAX_CELL: usize = 320;

impl Job for ImportMembers {
    const KIND: &'static str = "imports.members";
    const QUEUE: &'static str = "imports";
    /// How invitations are made (their lifetime, the link in their email).
    type Deps = InviteSettings;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(300),
            timeout: Duration::from_secs(15 * 60),
        }
    }

    async fn run(self, settings: &InviteSettings, ctx: JobContext) -> Result<(), JobError> {
        let pool = ctx.pool();
        let (org_id, id) = (self.org_id, ctx.id);
        match records::state(pool, org_id, id).await? {
            Some(JobState::Succeeded) => return Ok(()),
            Some(_) => {}
            None => return Err(JobError::Permanent("the import record is gone".into())),
        }
        let content = {
            let mut tx = records::org_tx(pool, org_id).await?;
            let content = repo::read_file(tx.conn(), org_id, id).await?;
            tx.commit().await?;
            content.ok_or_else(|| JobError::Permanent("the import file is gone".into()))?
        };
        let lines = file::parse(content.as_bytes()).map_err(|e| JobError::Refused {
            code: "invalid_file",
            message: format!("the import file is invalid: {e}"),
        })?;
        let first_seen = first_lines(&lines);
        let total = lines.len() as i64;
        let mut done = 0;
        for batch in lines.chunks(BATCH) {
            let (mut tx, actor) =
                act_for::<perm::InvitationsManage>(pool, org_id, self.requested_by).await?;
            let numbers: Vec<i32> = batch.iter().map(|l| l.line).collect();
            let decided: HashSet<i32> = repo::decided_lines(tx.conn(), org_id, id, &numbers)
                .await?
                .into_iter()
                .collect();
            let mut rows = Vec::new();
            for line in batch.iter().filter(|l| !decided.contains(&l.line)) {
                let row = match check(line, &first_seen) {
                    Err(row) => row,
                    Ok((email, role)) => {
                        let input = CreateInvitation {
                            email: email.as_str().to_owned(),
                            role: role.as_str().to_owned(),
                        };
                        let result =
                            orgs::create_invitation(&mut tx, &actor, settings, input).await;
                        let (status, error, invitation_id) = outcome(result)?;
                        ImportRow {
                            line: line.line,
                            email: Some(email.as_str().to_owned()),
                            role: Some(role.as_str().to_owned()),
                            status: status.to_owned(),
                            error,
                            invitation_id,
                        }
                    }
                };
                rows.push(row);
            }
            repo::insert_rows(tx.conn(), org_id, id, &rows).await?;
            done += batch.len() as i64;
            records::set_progress(tx.conn(), org_id, id, done, Some(total)).await?;
            tx.commit().await?;
        }

        let mut tx = records::org_tx(pool, org_id).await?;
        let (invited, skipped, errors) = repo::status_counts(tx.conn(), org_id, id).await?;
        repo::delete_file(tx.conn(), org_id, id).await?;
        records::succeed(
            tx.conn(),
            org_id,
            id,
            total,
            &json!({ "invited": invited, "skipped": skipped, "errors": errors }),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(%org_id, invited, skipped, errors, "import finished");
        Ok(())
    }
}
/// A line's result from its invitation: invited; `skipped` when the address
/// is a member's or has an open invitation; an `error` when the plan has no
/// seat left, the requester may not grant the role, or the role is unknown.
/// Anything else fails the batch.
fn outcome(
    result: Result<CreatedInvitation, OrgError>,
) -> Result<(&'static str, Option<String>, Option<Uuid>), JobError> {
    Ok(match result {
        Ok(inv) => ("invited", None, Some(inv.id)),
        // The plan's seats are full: not a duplicate, an error.
        Err(OrgError::Seats(e)) if e.is_limit_reached() => ("error", Some(e.to_string()), None),
        Err(e @ (OrgError::AlreadyMember | OrgError::InvitationExists)) => {
            ("skipped", Some(e.to_string()), None)
        }
        Err(e @ (OrgError::OwnerOnly(_) | OrgError::PermissionsNotHeld(_))) => {
            ("error", Some(e.to_string()), None)
        }
        Err(OrgError::Invalid(invalid)) => (
            "error",
            Some(
                invalid
                    .0
                    .into_iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            None,
        ),
        // The org went away under the requester.
        Err(e @ OrgError::OrgNotFound) => {
            return Err(JobError::Refused {
                code: "not_found",
                message: e.to_string(),
            });
        }
        Err(OrgError::Db(e)) => return Err(e.into()),
        Err(other) => return Err(JobError::Retry(anyhow::Error::new(other))),
    })
}

fn cell(fields: &[String], i: usize) -> Option<String> {
    fields
        .get(i)
        .map(|s| s.chars().take(MAX_CELL).collect::<String>())
}

/// The address and role of a well-formed line.
fn well_formed(line: &CsvLine) -> Result<(Email, RoleName), String> {
    if line.fields.len() != 2 {
        return Err(format!(
            "expected 2 fields (email,role), found {}",
            line.fields.len()
        ));
    }
    let email = Email::parse("email", &line.fields[0]).map_err(|e| format!("email: {}", e.message));
    let role = RoleName::parse("role", &line.fields[1]).map_err(|e| format!("role: {}", e.message));
    match (email, role) {
        (Ok(e), Ok(r)) => Ok((e, r)),
        (Err(a), Err(b)) => Err(format!("{a}; {b}")),
        (Err(a), _) | (_, Err(a)) => Err(a),
    }
}

/// The first line of the file that holds each well-formed address.
fn first_lines(lines: &[CsvLine]) -> HashMap<String, i32> {
    let mut first = HashMap::new();
    for line in lines {
        if let Ok((email, _)) = well_formed(line) {
            first.entry(email.as_str().to_owned()).or_insert(line.line);
        }
    }
    first
}

/// A line to invite, or its result when it cannot be.
fn check(
    line: &CsvLine,
    first_seen: &HashMap<String, i32>,
) -> Result<(Email, RoleName), ImportRow> {
    let row =
        |email: Option<String>, role: Option<String>, status: &str, error: String| ImportRow {
            line: line.line,
            email,
            role,
            status: status.to_owned(),
            error: Some(error),
            invitation_id: None,
        };
    match well_formed(line) {
        Err(error) => Err(row(
            cell(&line.fields, 0),
            cell(&line.fields, 1),
            "error",
            error,
        )),
        Ok((email, role)) => match first_seen.get(email.as_str()) {
            Some(&first) if first != line.line => Err(row(
                Some(email.as_str().to_owned()),
                Some(role.as_str().to_owned()),
                "skipped",
                format!("duplicate of line {first}"),
            )),
            _ => Ok((email, role)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: i32, f: &[&str]) -> CsvLine {
        CsvLine {
            line: n,
            fields: f.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn invitation_errors_decide_the_line_or_fail_the_batch() {
        use crate::billing::subscriptions::seats::SeatError;
        use crate::core::error::Invalid;

        let line = |e: OrgError| outcome(Err(e));
        let full = SeatError::SeatLimitReached {
            plan: "Free".into(),
            limit: 3,
            used: 3,
        };
        let (status, error, id) = line(OrgError::Seats(full)).unwrap();
        assert_eq!(status, "error");
        assert!(error.unwrap().starts_with("the Free plan allows 3 seats"));
        assert!(id.is_none());
        for skipped in [OrgError::AlreadyMember, OrgError::InvitationExists] {
            assert_eq!(line(skipped).unwrap().0, "skipped");
        }
        let (status, error, _) = line(OrgError::OwnerOnly("invite owners")).unwrap();
        assert_eq!(
            (status, error.as_deref()),
            ("error", Some("only an owner can invite owners"))
        );
        let grant = OrgError::PermissionsNotHeld("you cannot invite to a role");
        assert_eq!(line(grant).unwrap().0, "error");
        let unknown = Invalid::field("role", "unknown_role", "no such role");
        assert_eq!(
            line(OrgError::Invalid(unknown)).unwrap().1.as_deref(),
            Some("role: no such role")
        );

        assert!(matches!(
            line(OrgError::OrgNotFound),
            Err(JobError::Refused {
                code: "not_found",
                ..
            })
        ));
        assert!(matches!(
            line(OrgError::Db(sqlx::Error::PoolTimedOut)),
            Err(JobError::Retry(_))
        ));
        assert!(matches!(
            line(OrgError::Seats(SeatError::Db(sqlx::Error::PoolTimedOut))),
            Err(JobError::Retry(_))
        ));
    }

    #[test]
    fn lines_are_checked_and_duplicates_skipped() {
        let lines = vec![
            line(2, &["Ann@X.io", "member"]),
            line(3, &["not-an-email", "member"]),
            line(4, &["ann@x.io", "admin"]),
            line(5, &["bob@x.io", "Bad Role"]),
            line(6, &["bob@x.io"]),
        ];
        let first = first_lines(&lines);
        assert!(check(&lines[0], &first).is_ok());
        let bad = check(&lines[1], &first).unwrap_err();
        assert_eq!(bad.status, "error");
        assert!(bad.error.unwrap().starts_with("email:"));
        let dup = check(&lines[2], &first).unwrap_err();
        assert_eq!(dup.status, "skipped");
        assert_eq!(dup.error.as_deref(), Some("duplicate of line 2"));
        assert_eq!(check(&lines[3], &first).unwrap_err().status, "error");
        assert_eq!(check(&lines[4], &first).unwrap_err().status, "error");
    }
}
