//! Seats: members plus open invitations, within the plan's seat limit, and
//! [`SeatError`], what a seat check answers.
//! Each check runs under the org's row lock, which every change takes, so
//! concurrent invitations, acceptances and plan changes decide one at a time.

use super::plans::entitled_plan;
use crate::billing::model::Plan;
use crate::billing::repo;
use crate::core::db::TenantTx;

/// Why a seat check refuses, or could not decide.
#[derive(Debug, thiserror::Error)]
pub enum SeatError {
    /// Members and open invitations fill the plan's seats: no new invitation.
    #[error(
        "the {plan} plan allows {limit} seats (members and open invitations) and {used} are used; \
         upgrade the plan, or revoke an invitation or remove a member first"
    )]
    SeatLimitReached { plan: String, limit: i32, used: i64 },
    /// The members alone fill the plan's seats: no new member.
    #[error("the {plan} plan of this organization allows {limit} members, and it has {members}")]
    MemberLimitReached {
        plan: String,
        limit: i32,
        members: i64,
    },
    /// More members than the target plan's seats: some must leave first.
    #[error(
        "the {plan} plan allows {limit} members and this organization has {members}: \
         {} must leave before it can move to that plan",
        .members - i64::from(*.limit)
    )]
    MembersExceedPlan {
        plan: String,
        limit: i32,
        members: i64,
    },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl SeatError {
    /// Whether the plan's seats refused (the other variants are failures to check).
    pub fn is_limit_reached(&self) -> bool {
        matches!(
            self,
            SeatError::SeatLimitReached { .. }
                | SeatError::MemberLimitReached { .. }
                | SeatError::MembersExceedPlan { .. }
        )
    }
}

/// Refuses a new invitation when members plus open invitations already fill
/// the plan's seats. The caller holds the org's row lock.
pub(crate) async fn ensure_seat_for_invitation(tx: &mut TenantTx) -> Result<(), SeatError> {
    let org_id = tx.org_id();
    let (_, plan) = entitled_plan(tx.conn(), org_id).await?;
    let Some(limit) = plan.seat_limit else {
        return Ok(());
    };
    let used = repo::seats_used(tx.conn(), org_id).await?;
    if used >= i64::from(limit) {
        return Err(SeatError::SeatLimitReached {
            plan: plan.name,
            limit,
            used,
        });
    }
    Ok(())
}

/// Refuses a new member (an accepted invitation, whose seat it already held)
/// when the members alone fill the plan's seats: the plan may have shrunk
/// since the invitation was sent. The caller holds the org's row lock.
pub(crate) async fn ensure_seat_for_member(tx: &mut TenantTx) -> Result<(), SeatError> {
    let org_id = tx.org_id();
    let (_, plan) = entitled_plan(tx.conn(), org_id).await?;
    let Some(limit) = plan.seat_limit else {
        return Ok(());
    };
    let members = repo::member_count(tx.conn(), org_id).await?;
    if members >= i64::from(limit) {
        return Err(SeatError::MemberLimitReached {
            plan: plan.name,
            limit,
            members,
        });
    }
    Ok(())
}

/// A downgrade waits for the end of the period, but the members must fit
/// the new plan's seats by now.
pub(super) async fn ensure_members_fit(tx: &mut TenantTx, target: &Plan) -> Result<(), SeatError> {
    let Some(limit) = target.seat_limit else {
        return Ok(());
    };
    let org_id = tx.org_id();
    let members = repo::member_count(tx.conn(), org_id).await?;
    if members > i64::from(limit) {
        return Err(SeatError::MembersExceedPlan {
            plan: target.name.clone(),
            limit,
            members,
        });
    }
    Ok(())
}
