-- Email flows of the auth server: verification links, password recovery and
-- email change with confirmation.

-- The address an `email_change` token switches the account to.
alter table app.auth_one_time_tokens add column new_email text;
alter table app.auth_one_time_tokens add constraint auth_one_time_tokens_new_email
    check ((kind = 'email_change') = (new_email is not null)
           and (new_email is null or new_email = lower(new_email)));

-- GoTrue's user object shows the pending change and when mails were sent;
-- `recovery_sent_at` also spaces recovery emails to one address.
alter table app.auth_accounts add column recovery_sent_at timestamptz;
alter table app.auth_accounts add column email_change text;
alter table app.auth_accounts add column email_change_sent_at timestamptz;
