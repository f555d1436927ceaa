use sqlx::PgConnection;

use super::model::Plan;

/// The active plans, in catalog order.
pub async fn active_plans(conn: &mut PgConnection) -> sqlx::Result<Vec<Plan>> {
    sqlx::query_as(
        "select code, name, price_minor, currency, billing_interval as interval, trial_days,
                credits_per_period, seat_limit, features, updated_at
         from plans where active order by sort_order, price_minor, code",
    )
    .fetch_all(conn)
    .await
}
