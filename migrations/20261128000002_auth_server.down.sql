drop table app.auth_one_time_tokens;
drop table app.auth_refresh_tokens;
drop table app.auth_sessions;
drop table app.auth_accounts;
