alter table subscriptions drop column provider_change_until;
