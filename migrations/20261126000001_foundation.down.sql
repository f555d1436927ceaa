-- Policies on users, organizations and roles refer to memberships: cascade
-- drops them with the tables.
drop table if exists audit_log cascade;
drop table if exists invitations cascade;
drop table if exists memberships cascade;
drop table if exists roles cascade;
drop table if exists organizations cascade;
drop table if exists users cascade;
drop schema if exists app cascade;
-- The NOLOGIN role `tenantry_app` is cluster-wide and may serve other databases; it is left in place.
