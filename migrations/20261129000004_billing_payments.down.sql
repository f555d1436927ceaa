drop table app.webhook_events;
drop table app.billing_customer_orgs;
drop table billing_customers;
drop table credit_packs;
drop table invoices;
