drop trigger if exists audit_log_actor on audit_log;
drop function if exists app.audit_log_actor();
alter table audit_log drop column if exists actor_api_key_id;
drop function if exists app.touch_api_key(uuid, uuid);
drop function if exists app.enter_api_key(uuid, bytea);
drop function if exists app.current_api_key_id();
drop table if exists api_keys;
