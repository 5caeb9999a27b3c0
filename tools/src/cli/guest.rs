//! `bittybot guest keygen|sign|verify`: Ed25519 signatures of guest
//! components, and the integrity policy from the global flags.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use bittybot_host::GuestPolicy;
use bittybot_host::guest::{GuestSource, generate_key, hex, sign, signature_path, unhex, verify_signature};

/// The `guest` subcommands.
#[derive(Debug, Subcommand)]
pub enum GuestCommand {
    /// Make a key pair: KEY (private seed, hex) and KEY.pub (public key, hex).
    Keygen {
        /// Where to write the private key.
        key: PathBuf,
    },
    /// Sign a guest: writes GUEST.sig.
    Sign {
        /// The private key file.
        #[arg(long)]
        key: PathBuf,
        /// The guest component.
        guest: PathBuf,
    },
    /// Check a guest's signature (GUEST.sig) against a public key.
    Verify {
        /// The public key (hex, or a file holding it).
        #[arg(long)]
        pubkey: String,
        /// The guest component.
        guest: PathBuf,
    },
}

fn key32(text: &str, what: &str) -> Result<[u8; 32]> {
    let bytes = unhex(text.trim()).with_context(|| format!("{what} is not hex"))?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("{what} must be 32 bytes (64 hex digits)"))
}

/// A public key given inline or as a file.
pub fn public_key(arg: &str) -> Result<[u8; 32]> {
    let text = match std::fs::read_to_string(arg) {
        Ok(t) => t,
        Err(_) => arg.to_owned(),
    };
    key32(&text, "the public key")
}

/// The integrity policy from the global flags.
pub fn policy(sha256: Option<&str>, pubkey: Option<&str>) -> Result<GuestPolicy> {
    Ok(GuestPolicy {
        sha256: sha256.map(|s| s.trim().to_ascii_lowercase()),
        public_key: pubkey.map(public_key).transpose()?,
    })
}

/// Run a `guest` subcommand.
pub fn run(cmd: &GuestCommand) -> Result<()> {
    match cmd {
        GuestCommand::Keygen { key } => {
            let (seed, public) = generate_key().map_err(anyhow::Error::msg)?;
            let mut pub_path = key.as_os_str().to_owned();
            pub_path.push(".pub");
            write_private(key, &hex(&seed))?;
            std::fs::write(&pub_path, hex(&public) + "\n")?;
            println!("{}", hex(&public));
            eprintln!("wrote {} (keep it secret) and {}", key.display(), PathBuf::from(pub_path).display());
            Ok(())
        }
        GuestCommand::Sign { key, guest } => {
            let text =
                std::fs::read_to_string(key).with_context(|| format!("cannot read {}", key.display()))?;
            let seed = key32(&text, "the private key")?;
            let bytes = std::fs::read(guest).with_context(|| format!("cannot read {}", guest.display()))?;
            let sig = sign(&seed, &bytes).map_err(anyhow::Error::msg)?;
            let out = signature_path(guest);
            std::fs::write(&out, hex(&sig) + "\n")?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        GuestCommand::Verify { pubkey, guest } => {
            let public = public_key(pubkey)?;
            let source = GuestSource::from_file(guest)?;
            let sig_path = signature_path(guest);
            let text = std::fs::read_to_string(&sig_path)
                .with_context(|| format!("no signature at {}", sig_path.display()))?;
            let Some(sig) = unhex(text.trim()) else {
                bail!("{} is not a hex signature", sig_path.display())
            };
            verify_signature(&public, source.bytes(), &sig).map_err(anyhow::Error::msg)?;
            println!("OK: {} (SHA-256 {}) is signed by {}", guest.display(), source.sha256(), hex(&public));
            Ok(())
        }
    }
}

fn write_private(path: &PathBuf, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(())
}
