//! `hadal key new` and `hadal key hash`: API keys for `hadal serve` / `hadal replica`. The
//! server stores only a key's SHA-256; the key itself is printed once, by `key new`, to the
//! person who runs it. `key hash` reads a key from stdin (not from the command line, where it
//! would land in shell history and process listings).

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use anyhow::Context;
use hadal::server::auth::{KeyRole, generate_key, hash_key};

/// `hadal key …`.
#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Create a random API key: prints the key (once; give it to the client) and the config
    /// lines that let the server accept it.
    New {
        /// What the key may do: reader, writer or admin.
        #[arg(long, default_value = "writer")]
        role: KeyRole,
        /// A name for logs and messages.
        #[arg(long, default_value = "client")]
        name: String,
    },
    /// Print the SHA-256 of a key read from stdin (one line), as the config wants it.
    Hash,
}

/// Runs a `hadal key` subcommand.
pub fn run(cmd: KeyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeyCommand::New { role, name } => {
            anyhow::ensure!(
                !name.is_empty() && !name.contains(['"', '\\', '\n', ':', ',']),
                "--name must be non-empty without quotes, backslashes, colons, commas or newlines"
            );
            let key = generate_key();
            let hash = hash_key(&key);
            println!("key: {key}");
            println!("(shown once: give it to the client as `Authorization: Bearer {key}`)");
            println!();
            println!("# in hadal.toml:");
            println!("[[keys]]");
            println!("name = \"{name}\"");
            println!("role = \"{role}\"");
            println!("sha256 = \"{hash}\"");
            println!();
            println!("# or as a flag: --api-key-hash {role}:{hash}:{name}");
        }
        KeyCommand::Hash => {
            if std::io::stdin().is_terminal() {
                eprintln!("type the key and press Enter:");
            }
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the key from stdin")?;
            let key = line.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!key.is_empty(), "no key on stdin");
            println!("{}", hash_key(key));
        }
    }
    Ok(ExitCode::SUCCESS)
}
