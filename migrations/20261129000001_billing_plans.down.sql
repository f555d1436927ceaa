drop table plans;
