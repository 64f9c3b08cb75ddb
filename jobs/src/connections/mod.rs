//! The connection store's rules: what a connection of each kind must and may hold, and what may
//! be shown of it. The values go to the secrets provider (`secrets`) and never come back out of
//! the store; what is shown is the kind, the hosts the credentials go to and the names of the
//! fields present. `probe` tests that a stored connection answers.

pub mod probe;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::secrets::{ConnectionSecret, HostRule};

/// The longest value a field may hold: a connection string or a PEM key fits; a pasted file
/// does not.
const MAX_VALUE_BYTES: usize = 16 * 1024;

/// What a connection connects to. MariaDB connections are `mysql`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionKind {
    Postgres,
    Mysql,
    Mssql,
    Mongodb,
    Rest,
}

const DATABASE_FIELDS: &[&str] = &[
    "url",
    "host",
    "port",
    "dbname",
    "database",
    "username",
    "password",
    "engine",
    "allowed_hosts",
];

const REST_FIELDS: &[&str] = &[
    "url",
    "token",
    "api_key",
    "username",
    "password",
    "client_id",
    "client_secret",
    "token_url",
    "allowed_hosts",
];

impl ConnectionKind {
    pub const ALL: [ConnectionKind; 5] = [
        ConnectionKind::Postgres,
        ConnectionKind::Mysql,
        ConnectionKind::Mssql,
        ConnectionKind::Mongodb,
        ConnectionKind::Rest,
    ];

    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Some(Self::Postgres),
            "mysql" | "mariadb" => Some(Self::Mysql),
            "mssql" | "sqlserver" => Some(Self::Mssql),
            "mongodb" => Some(Self::Mongodb),
            "rest" => Some(Self::Rest),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
            Self::Mssql => "mssql",
            Self::Mongodb => "mongodb",
            Self::Rest => "rest",
        }
    }

    /// The kind a dataset's source format needs, for formats that take a connection.
    pub fn for_format(format: &str) -> Option<Self> {
        match format {
            "postgres" => Some(Self::Postgres),
            "mysql" | "mariadb" => Some(Self::Mysql),
            "mssql" => Some(Self::Mssql),
            "mongodb" => Some(Self::Mongodb),
            "rest" => Some(Self::Rest),
            _ => None,
        }
    }

    fn fields(self) -> Vec<&'static str> {
        match self {
            Self::Rest => REST_FIELDS.to_vec(),
            Self::Mssql => [DATABASE_FIELDS, &["trust_server_certificate"]].concat(),
            _ => DATABASE_FIELDS.to_vec(),
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Self::Postgres => 5432,
            Self::Mysql => 3306,
            Self::Mssql => 1433,
            Self::Mongodb => 27017,
            Self::Rest => 443,
        }
    }

    fn url_schemes(self) -> &'static [&'static str] {
        match self {
            Self::Postgres => &["postgres", "postgresql"],
            Self::Mysql => &["mysql", "mariadb"],
            Self::Mongodb => &["mongodb", "mongodb+srv"],
            Self::Rest => &["http", "https"],
            // An ADO.NET connection string: no scheme.
            Self::Mssql => &[],
        }
    }
}

impl std::fmt::Display for ConnectionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a connection was refused. The message names fields, never their values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("connection '{id}': {message}")]
pub struct InvalidConnection {
    pub id: String,
    pub message: String,
}

/// What may be shown of a valid connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionProfile {
    pub kind: ConnectionKind,
    /// Where the credentials go: the database's address(es), or the hosts a REST connection
    /// may send them to.
    pub hosts: Vec<HostRule>,
    /// The names of the fields present, sorted.
    pub fields: Vec<String>,
}

/// A connection id: what Secrets Manager accepts as a name, without the characters that would
/// let an id look like a path or another secret's ARN.
pub fn check_id(id: &str) -> Result<(), InvalidConnection> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidConnection {
            id: id.chars().take(128).collect(),
            message: "an id is 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit".into(),
        })
    }
}

/// Checks `fields` for a connection of `kind`: no field the kind does not read (a typo would
/// otherwise be stored and silently ignored), text values, a port that is a port, a URL of the
/// kind's scheme, enough to connect, and for REST a credential and the hosts it may go to.
pub fn validate(
    id: &str,
    kind: ConnectionKind,
    fields: &BTreeMap<String, Value>,
) -> Result<ConnectionProfile, InvalidConnection> {
    check_id(id)?;
    let refuse = |message: String| InvalidConnection {
        id: id.to_owned(),
        message,
    };
    let allowed = kind.fields();
    for (name, value) in fields {
        if !allowed.contains(&name.as_str()) {
            return Err(refuse(format!(
                "a {kind} connection has no field `{name}` (it takes {})",
                allowed.join(", ")
            )));
        }
        check_value(name, value).map_err(|why| refuse(format!("field `{name}` {why}")))?;
    }
    let has = |name: &str| fields.contains_key(name);
    if has("url") && has("host") {
        return Err(refuse(
            "give either `url` or `host` (with `port`, `dbname`, ...), not both".into(),
        ));
    }
    if let Some(Value::String(url)) = fields.get("url")
        && !kind.url_schemes().is_empty()
    {
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !scheme.is_some_and(|s| kind.url_schemes().contains(&s.as_str())) {
            return Err(refuse(format!(
                "field `url` must start with {}",
                kind.url_schemes()
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )));
        }
    }
    match kind {
        ConnectionKind::Rest => {
            let credential = has("token")
                || has("api_key")
                || (has("username") && has("password"))
                || (has("client_id") && has("client_secret"));
            if !credential {
                return Err(refuse(
                    "a rest connection holds a credential: `token`, `api_key`, `username` and `password`, or `client_id` and `client_secret`".into(),
                ));
            }
            if has("username") != has("password") {
                return Err(refuse(
                    "`username` and `password` go together (basic authentication)".into(),
                ));
            }
        }
        ConnectionKind::Mssql => {
            if !has("url") && !has("host") {
                return Err(refuse(
                    "needs `url` (an ADO.NET connection string) or `host`".into(),
                ));
            }
        }
        _ => {
            if !has("url") && !(has("host") && (has("dbname") || has("database"))) {
                return Err(refuse(
                    "needs `url`, or `host` with `dbname` (and optionally `port`, `username`, `password`)".into(),
                ));
            }
        }
    }
    let secret = ConnectionSecret::new(id, fields.clone());
    let hosts = match kind {
        ConnectionKind::Rest => secret.allowed_hosts(),
        _ => database_hosts(kind, &secret).map_err(refuse)?,
    };
    if hosts.is_empty() {
        return Err(refuse(
            "names no host its credentials may go to: give `allowed_hosts` (host or host:port, a list), or a `url` or `token_url` with a known port".into(),
        ));
    }
    Ok(ConnectionProfile {
        kind,
        hosts,
        fields: fields.keys().cloned().collect(),
    })
}

/// The profile of a connection read back from the secrets provider (for a test).
pub fn profile(
    kind: ConnectionKind,
    secret: &ConnectionSecret,
) -> Result<ConnectionProfile, InvalidConnection> {
    validate(secret.id(), kind, secret.fields())
}

fn check_value(name: &str, value: &Value) -> Result<(), String> {
    match (name, value) {
        ("port", Value::Number(n)) => n
            .as_u64()
            .filter(|p| (1..=65535).contains(p))
            .map(|_| ())
            .ok_or_else(|| "must be a port number from 1 to 65535".to_owned()),
        ("port", Value::String(s)) => s
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .map(|_| ())
            .ok_or_else(|| "must be a port number from 1 to 65535".to_owned()),
        ("allowed_hosts", Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                if item.as_str().and_then(HostRule::parse).is_none() {
                    return Err(format!("entry {} is not `host` or `host:port`", i + 1));
                }
            }
            Ok(())
        }
        ("allowed_hosts", Value::String(list)) => {
            if list.split(',').all(|h| HostRule::parse(h).is_some()) {
                Ok(())
            } else {
                Err("must list `host` or `host:port` entries, comma-separated".to_owned())
            }
        }
        ("trust_server_certificate", Value::Bool(_)) => Ok(()),
        (_, Value::String(s)) if s.trim().is_empty() => Err("is empty".to_owned()),
        (_, Value::String(s)) if s.len() > MAX_VALUE_BYTES => {
            Err(format!("is longer than {MAX_VALUE_BYTES} bytes"))
        }
        (_, Value::String(_)) => Ok(()),
        _ => Err("must be text".to_owned()),
    }
}

/// The address(es) a database connection connects to, with the kind's default port.
fn database_hosts(
    kind: ConnectionKind,
    secret: &ConnectionSecret,
) -> Result<Vec<HostRule>, String> {
    if kind == ConnectionKind::Mssql {
        let config = crate::sources::mssql::config_from(secret)
            .map_err(|_| "field `url` is not a valid ADO.NET connection string".to_owned())?;
        let address = config.get_addr();
        return Ok(HostRule::parse(&address).into_iter().collect());
    }
    let Some(url) = secret.field("url") else {
        let host = secret.field("host").unwrap_or_default();
        let port = secret
            .field("port")
            .unwrap_or_else(|| kind.default_port().to_string());
        return HostRule::parse(&format!("{host}:{port}"))
            .map(|rule| vec![rule])
            .ok_or_else(|| "field `host` is not a host name or address".to_owned());
    };
    // The authority by hand: a MongoDB URL may list several hosts, which `url` cannot parse.
    let after_scheme = url.split_once("://").map(|(_, rest)| rest).unwrap_or(&url);
    let authority = after_scheme.split(['/', '?']).next().unwrap_or_default();
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let mut rules = Vec::new();
    for host in hosts.split(',') {
        let mut rule = HostRule::parse(host)
            .ok_or_else(|| "field `url` does not name a valid host".to_owned())?;
        rule.port.get_or_insert(kind.default_port());
        rules.push(rule);
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: Value) -> BTreeMap<String, Value> {
        serde_json::from_value(value).unwrap()
    }

    fn refused(kind: ConnectionKind, value: Value) -> String {
        validate("c1", kind, &fields(value))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn database_connections_name_their_server() {
        let rds = validate(
            "pg",
            ConnectionKind::Postgres,
            &fields(json!({"host": "db.internal", "port": 5433, "dbname": "ventas", "username": "u", "password": "hunter2"})),
        )
        .unwrap();
        assert_eq!(
            rds.hosts,
            vec![HostRule::parse("db.internal:5433").unwrap()]
        );
        assert_eq!(
            rds.fields,
            ["dbname", "host", "password", "port", "username"]
        );
        let url = validate(
            "my",
            ConnectionKind::Mysql,
            &fields(json!({"url": "mysql://u:p%40ss@127.0.0.1/shop"})),
        )
        .unwrap();
        assert_eq!(url.hosts[0].to_string(), "127.0.0.1:3306");
        let mongo = validate(
            "m",
            ConnectionKind::Mongodb,
            &fields(json!({"url": "mongodb://u:p@a.test:27018,b.test/db?replicaSet=rs"})),
        )
        .unwrap();
        let shown: Vec<String> = mongo.hosts.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["a.test:27018", "b.test:27017"]);
        let ado = validate(
            "ms",
            ConnectionKind::Mssql,
            &fields(json!({"url": "server=tcp:sql.test,1444;user=sa;password=x"})),
        )
        .unwrap();
        assert_eq!(ado.hosts[0].to_string(), "sql.test:1444");
    }

    #[test]
    fn unknown_fields_wrong_types_and_missing_parts_are_refused_without_values() {
        let e = refused(
            ConnectionKind::Postgres,
            json!({"url": "postgres://h/d", "pasword": "hunter2"}),
        );
        assert!(
            e.contains("no field `pasword`") && !e.contains("hunter2"),
            "{e}"
        );
        let e = refused(
            ConnectionKind::Postgres,
            json!({"url": "mysql://u:hunter2@h/d"}),
        );
        assert!(e.contains("postgres://") && !e.contains("hunter2"), "{e}");
        let e = refused(
            ConnectionKind::Postgres,
            json!({"host": "h", "port": 70000, "dbname": "d"}),
        );
        assert!(e.contains("port"), "{e}");
        let e = refused(ConnectionKind::Postgres, json!({"host": "h"}));
        assert!(e.contains("dbname"), "{e}");
        let e = refused(
            ConnectionKind::Postgres,
            json!({"host": "h", "dbname": "d", "password": 12}),
        );
        assert!(e.contains("`password` must be text"), "{e}");
        let e = refused(
            ConnectionKind::Postgres,
            json!({"url": "postgres://h/d", "host": "h"}),
        );
        assert!(e.contains("not both"), "{e}");
        let e = refused(
            ConnectionKind::Mysql,
            json!({"host": "h", "dbname": "d", "password": ""}),
        );
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn rest_connections_need_a_credential_and_where_it_may_go() {
        let e = refused(ConnectionKind::Rest, json!({"url": "https://api.test/v1"}));
        assert!(e.contains("credential"), "{e}");
        let e = refused(ConnectionKind::Rest, json!({"token": "t0ken"}));
        assert!(e.contains("allowed_hosts") && !e.contains("t0ken"), "{e}");
        let e = refused(
            ConnectionKind::Rest,
            json!({"username": "u", "allowed_hosts": ["a.test"]}),
        );
        assert!(e.contains("credential") || e.contains("together"), "{e}");
        let e = refused(
            ConnectionKind::Rest,
            json!({"token": "t", "allowed_hosts": ["a.test", "bad host"]}),
        );
        assert!(e.contains("entry 2"), "{e}");
        let ok = validate(
            "api",
            ConnectionKind::Rest,
            &fields(json!({"token": "t0ken", "allowed_hosts": ["api.test", "127.0.0.1:8443"]})),
        )
        .unwrap();
        assert_eq!(ok.hosts.len(), 2);
        let oauth = validate(
            "oauth",
            ConnectionKind::Rest,
            &fields(json!({"client_id": "c", "client_secret": "s", "token_url": "https://auth.test/token"})),
        )
        .unwrap();
        assert_eq!(oauth.hosts[0].to_string(), "auth.test:443");
    }

    #[test]
    fn ids_are_names_not_paths() {
        assert!(check_id("ventas-pg.prod_1").is_ok());
        for bad in ["", "../x", "a/b", "-x", "arn:aws:x", &"x".repeat(129)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }
}
