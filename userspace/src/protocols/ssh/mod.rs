//! The SSH gateway, under construction: so far the policy view of an exec
//! request ([`command`]). The relay (russh server to the agent, russh
//! client upstream with held keys) comes next; until then `ssh` targets
//! are not accepted in the config.

pub mod command;
