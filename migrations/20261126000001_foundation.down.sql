drop table if exists audit_log;
drop table if exists invitations;
drop table if exists memberships;
drop table if exists roles;
drop table if exists organizations;
drop table if exists users;
drop schema if exists app cascade;
-- The NOLOGIN role `tenantry_app` is cluster-wide and may serve other databases; it is left in place.
