//! Argo CD resource health checks (`resource.customizations.health.*`),
//! run as Argo CD runs them: the object as the global `obj`, JSON null as
//! nil, and a returned table with `status` and `message`. Argo CD embeds
//! gopher-lua, a Lua 5.1, so these run on Lua 5.1 too.

use anyhow::{Result, anyhow};
use mlua::serde::SerializeOptions;
use mlua::{Lua, LuaSerdeExt, Table};
use serde_json::Value;

/// What a health check returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub status: String,
    pub message: String,
}

/// mlua's errors are not `Send`, so they become messages.
fn lua_error(what: &'static str) -> impl Fn(mlua::Error) -> anyhow::Error {
    move |e| anyhow!("{what}: {e}")
}

pub fn run_health_check(script: &str, object: &Value) -> Result<Health> {
    let lua = Lua::new();
    let options = SerializeOptions::new().serialize_none_to_null(false).serialize_unit_to_null(false);
    let obj = lua.to_value_with(object, options).map_err(lua_error("converting the object to Lua"))?;
    lua.globals().set("obj", obj).map_err(lua_error("setting obj"))?;
    let result: Table =
        lua.load(script).set_name("health.lua").eval().map_err(lua_error("running the health check"))?;
    Ok(Health {
        status: result.get("status").map_err(lua_error("reading status"))?,
        message: result.get::<Option<String>>("message").map_err(lua_error("reading message"))?.unwrap_or_default(),
    })
}
