-- A change of a Stripe-managed subscription is decided here, made at Stripe
-- (no transaction held while it answers) and then mirrored. While one is in
-- flight, the org's other changes wait: this lease says until when at most
-- (a crashed request's lease simply runs out).
alter table subscriptions add column provider_change_until timestamptz;
