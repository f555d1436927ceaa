//! Seats: members plus open invitations, within the plan's seat limit.
//! Each check runs under the org's row lock, which every change takes, so
//! concurrent invitations, acceptances and plan changes decide one at a time.

use super::plans::entitled_plan;
use crate::billing::model::Plan;
use crate::billing::repo;
use crate::core::db::TenantTx;
use crate::core::error::ApiError;

fn seats_full(plan: &Plan, limit: i32, used: i64) -> ApiError {
    ApiError::conflict(
        "seat_limit_reached",
        format!(
            "the {} plan allows {limit} seats (members and open invitations) and {used} are used; \
             upgrade the plan, or revoke an invitation or remove a member first",
            plan.name
        ),
    )
}

/// Refuses a new invitation when members plus open invitations already fill
/// the plan's seats. The caller holds the org's row lock.
pub(crate) async fn ensure_seat_for_invitation(tx: &mut TenantTx) -> Result<(), ApiError> {
    let org_id = tx.org_id();
    let (_, plan) = entitled_plan(tx.conn(), org_id).await?;
    let Some(limit) = plan.seat_limit else {
        return Ok(());
    };
    let used = repo::seats_used(tx.conn(), org_id).await?;
    if used >= i64::from(limit) {
        return Err(seats_full(&plan, limit, used));
    }
    Ok(())
}

/// Refuses a new member (an accepted invitation, whose seat it already held)
/// when the members alone fill the plan's seats: the plan may have shrunk
/// since the invitation was sent. The caller holds the org's row lock.
pub(crate) async fn ensure_seat_for_member(tx: &mut TenantTx) -> Result<(), ApiError> {
    let org_id = tx.org_id();
    let (_, plan) = entitled_plan(tx.conn(), org_id).await?;
    let Some(limit) = plan.seat_limit else {
        return Ok(());
    };
    let members = repo::member_count(tx.conn(), org_id).await?;
    if members >= i64::from(limit) {
        return Err(ApiError::conflict(
            "seat_limit_reached",
            format!(
                "the {} plan of this organization allows {limit} members, and it has {members}",
                plan.name
            ),
        ));
    }
    Ok(())
}

/// A downgrade waits for the end of the period, but the members must fit
/// the new plan's seats by now.
pub(super) async fn ensure_members_fit(tx: &mut TenantTx, target: &Plan) -> Result<(), ApiError> {
    let Some(limit) = target.seat_limit else {
        return Ok(());
    };
    let org_id = tx.org_id();
    let members = repo::member_count(tx.conn(), org_id).await?;
    if members > i64::from(limit) {
        let leave = members - i64::from(limit);
        return Err(ApiError::conflict(
            "seat_limit_reached",
            format!(
                "the {} plan allows {limit} members and this organization has {members}: \
                 {leave} must leave before it can move to that plan",
                target.name
            ),
        ));
    }
    Ok(())
}
