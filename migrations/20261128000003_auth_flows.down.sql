alter table app.auth_accounts drop column email_change_sent_at;
alter table app.auth_accounts drop column email_change;
alter table app.auth_accounts drop column recovery_sent_at;
alter table app.auth_one_time_tokens drop constraint auth_one_time_tokens_new_email;
alter table app.auth_one_time_tokens drop column new_email;
