alter table job_records drop column error_code;
drop table app.auth_ended_sessions;
delete from app.auth_one_time_tokens where kind = 'reauthentication';
alter table app.auth_one_time_tokens drop constraint auth_one_time_tokens_kind;
alter table app.auth_one_time_tokens add constraint auth_one_time_tokens_kind
    check (kind in ('confirmation', 'recovery', 'email_change'));
