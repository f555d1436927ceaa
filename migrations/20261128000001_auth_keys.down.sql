drop table app.auth_signing_keys;
