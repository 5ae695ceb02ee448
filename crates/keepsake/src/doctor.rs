//! `keepsake doctor`: what blocks this device's sync and what fixes it. It signs in as
//! the device itself (its enrolment in the data directory; no token needed), judges the
//! same conditions the agent judges (`conditions`), and adds what the agent lives
//! through — its last refusal, whether it runs at all — so it never says "nothing is
//! blocking" while the agent is blocked.

use crate::conditions::{ServerView, snapshot};
use anyhow::Result;
use keepsake_device::conditions::{Assumed, parse_network};
use keepsake_policy::doctor::{AgentView, Unknowns, diagnose_with_agent, render_json, render_text};
use keepsake_policy::{Network, PolicyConfig, ReasonCode, evaluate};
use keepsake_transport::client;
use std::path::PathBuf;

/// Options of `keepsake doctor`; the simulated conditions override what the OS says.
#[derive(clap::Args)]
pub struct DoctorArgs {
    /// The Keepsake server (default: the one the device enrolled with).
    #[arg(long, env = "KEEPSAKE_SERVER")]
    server: Option<String>,
    /// The server certificate's fingerprint (default: the one the device pinned).
    #[arg(long, env = "KEEPSAKE_FINGERPRINT")]
    fingerprint: Option<String>,
    /// An access token, to check an account without an enrolled device.
    #[arg(long, env = "KEEPSAKE_TOKEN")]
    token: Option<String>,
    /// The library folder whose disk is checked for free space (default: the agent's).
    #[arg(long)]
    library: Option<PathBuf>,
    /// The device's data directory: its enrolment, its agent's status and settings.
    #[arg(long, env = "KEEPSAKE_DEVICE_DATA", default_value = "keepsake-device")]
    device_data: PathBuf,
    /// Print JSON for programs instead of the checklist.
    #[arg(long)]
    json: bool,
    /// Simulate the connection: offline, wifi, wired or cellular.
    #[arg(long, value_parser = parse_network)]
    network: Option<Network>,
    /// Simulate the battery level in percent.
    #[arg(long)]
    battery: Option<u8>,
    /// Simulate being plugged in (true/false).
    #[arg(long)]
    charging: Option<bool>,
    /// Simulate low-power mode.
    #[arg(long)]
    low_power: bool,
    /// Simulate free bytes on the library's disk.
    #[arg(long)]
    free_bytes: Option<u64>,
    /// Allow mobile data (for a simulated cellular connection).
    #[arg(long)]
    cellular_allowed: bool,
}

/// Runs the doctor; returns whether sync is blocked.
pub async fn run(args: DoctorArgs) -> Result<bool> {
    let data = args.device_data.as_path();
    let enrolled = crate::device_cli::load(data).ok();
    let status = crate::device_cli::load_status(data);
    let has_agent = enrolled.is_some() || status.is_some();
    let url = args
        .server
        .clone()
        .or_else(|| enrolled.as_ref().map(|e| e.server.clone()))
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let fingerprint = args
        .fingerprint
        .clone()
        .or_else(|| enrolled.as_ref().and_then(|e| e.fingerprint.clone()));
    let ServerAnswer {
        view: server,
        unreachable: problem,
        account,
    } = ask_server(
        &url,
        fingerprint.as_deref(),
        args.token.as_deref(),
        enrolled.as_ref(),
    )
    .await;
    let folder = args
        .library
        .clone()
        .or_else(|| {
            status
                .as_ref()
                .and_then(|s| s.folder.clone())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("."));
    let assumed = Assumed {
        network: args.network,
        battery_percent: args.battery,
        charging: args.charging,
        low_power: args.low_power,
        free_bytes: args.free_bytes,
        cellular_allowed: args.cellular_allowed,
    };
    let mut snapshot = snapshot(
        has_agent.then_some(data),
        &folder,
        account.as_deref(),
        &server,
        &assumed,
    )?;
    snapshot.last_stall_at = status.as_ref().and_then(|a| a.last_stall_ms);
    let decision = evaluate(&snapshot, &PolicyConfig::default());
    let unknown = Unknowns {
        sync_switch: !has_agent,
        transfer_history: status.is_none(),
    };
    let agent = AgentView {
        running: has_agent
            .then(|| keepsake_device::agent_running(&data.join("state")))
            .flatten(),
        reason: status.as_ref().and_then(|s| s.reason.clone()),
        message: status.as_ref().and_then(|s| s.reason_message.clone()),
        last_pass: status.as_ref().map(|s| s.last_pass_ms).filter(|&at| at > 0),
    };
    let mut report = diagnose_with_agent(&snapshot, &decision, &unknown, &agent);
    if let Some(problem) = &problem {
        // Say what failed (a certificate that does not match the pin, plaintext to a TLS
        // port), not only that the server "does not answer".
        for check in &mut report.checks {
            for r in &mut check.reasons {
                if r.code == ReasonCode::ServerUnreachable {
                    r.message = format!("{}: {problem}", r.message);
                    check.summary = r.message.clone();
                }
            }
        }
    }
    // Files left out block nothing else, so they are not one of the seven causes; they
    // are said after them, each with its fix.
    let (skipped, damaged_waiting) = status
        .map(|a| (a.skipped, a.damaged_waiting))
        .unwrap_or_default();
    let out = if args.json {
        let mut json: serde_json::Value = serde_json::from_str(&render_json(&report))?;
        json["skipped_files"] = serde_json::to_value(&skipped)?;
        json["damaged_waiting"] = damaged_waiting.into();
        format!("{}\n", serde_json::to_string_pretty(&json)?)
    } else {
        let mut text = render_text(&report);
        for f in &skipped {
            text.push_str(&format!(
                "left out: {} [{}] {}\n",
                f.path, f.reason, f.message
            ));
        }
        if damaged_waiting > 0 {
            text.push_str(&format!(
                "waiting: {damaged_waiting} photos the cloud lost part of; they arrive once a device \
                 that has them syncs (`keepsake scrub` on the server names them)\n"
            ));
        }
        text
    };
    // A reader that stopped (`keepsake doctor --json | head`) is not an error worth a panic.
    use std::io::Write;
    let _ = std::io::stdout().write_all(out.as_bytes());
    Ok(!report.syncing)
}

/// What the server said when the doctor asked.
struct ServerAnswer {
    /// Its view: reachable, the account's plan and use, the version it requires.
    view: ServerView,
    /// Why it could not be asked, in words, when it could not.
    unreachable: Option<String>,
    /// The account, as far as it is known (the enrolment says it even offline).
    account: Option<String>,
}

/// Asks the server what it knows: reachable or why not, the account (signed in as the
/// enrolled device, or with a token), and the account's name as far as it is known.
async fn ask_server(
    url: &str,
    fingerprint: Option<&str>,
    token: Option<&str>,
    enrolled: Option<&crate::device_cli::Enrolled>,
) -> ServerAnswer {
    let mut view = ServerView {
        reachable: false,
        account: None,
        min_version: None,
    };
    // Known locally even when the server cannot say: the device enrolled as this account.
    let mut account = enrolled.map(|e| e.account.clone());
    let connecting = async {
        match fingerprint {
            Some(pin) => client::connect_tls(url, pin)
                .await
                .map_err(|e| e.to_string()),
            None => client::connect(url).await.map_err(|e| e.to_string()),
        }
    };
    let channel = match tokio::time::timeout(std::time::Duration::from_secs(5), connecting).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(e)) => {
            return ServerAnswer {
                view,
                unreachable: Some(e),
                account,
            };
        }
        Err(_) => {
            return ServerAnswer {
                view,
                unreachable: Some("no answer within 5 s".into()),
                account,
            };
        }
    };
    let token = match (token, enrolled) {
        (Some(t), _) => t.to_string(),
        (None, Some(e)) => {
            let mut anonymous =
                client::accounts_client(channel.clone(), client::BearerAuth::anonymous());
            let refreshed = anonymous
                .refresh_token(client::pb::RefreshTokenRequest {
                    device_id: e.device_id.clone(),
                    device_token: e.device_token.clone(),
                    client_version: env!("CARGO_PKG_VERSION").into(),
                })
                .await;
            match refreshed {
                Ok(reply) => match reply.into_inner().access {
                    Some(access) => access.token,
                    None => {
                        return ServerAnswer {
                            view,
                            unreachable: Some("the server sent no token".into()),
                            account,
                        };
                    }
                },
                Err(status) => {
                    let e = keepsake_transport::client::CallError::from(status.clone());
                    if e.is_transient() {
                        return ServerAnswer {
                            view,
                            unreachable: Some(why_no_answer(url, &e).await),
                            account,
                        };
                    }
                    view.reachable = true;
                    if e.reason() == "CLIENT_TOO_OLD" {
                        let mut anonymous =
                            client::accounts_client(channel, client::BearerAuth::anonymous());
                        view.ask_account(&mut anonymous).await;
                    } else {
                        // Revoked or unknown: not signed in, whatever the file says.
                        account = None;
                    }
                    return ServerAnswer {
                        view,
                        unreachable: None,
                        account,
                    };
                }
            }
        }
        (None, None) => {
            // Nothing to sign in with; still, a TLS port reached over http:// is no answer.
            if let Some(problem) = client::plaintext_problem(url).await {
                return ServerAnswer {
                    view,
                    unreachable: Some(problem),
                    account: None,
                };
            }
            view.reachable = true;
            return ServerAnswer {
                view,
                unreachable: None,
                account: None,
            };
        }
    };
    let mut accounts = client::accounts_client(channel, client::BearerAuth::new(&token));
    match accounts.get_account(client::pb::GetAccountRequest {}).await {
        Err(status) => {
            let e = keepsake_transport::client::CallError::from(status);
            if e.is_transient() {
                return ServerAnswer {
                    view,
                    unreachable: Some(why_no_answer(url, &e).await),
                    account,
                };
            }
            view.reachable = true;
            view.ask_account(&mut accounts).await;
        }
        Ok(reply) => {
            view.reachable = true;
            view.account = reply.into_inner().account;
        }
    }
    if let Some(a) = &view.account {
        account = Some(a.account.clone());
    } else if token_given_but_refused(&view) {
        account = None;
    }
    ServerAnswer {
        view,
        unreachable: None,
        account,
    }
}

/// A call that got no answer, in words: a TLS server reached over http:// is named as such.
async fn why_no_answer(url: &str, e: &keepsake_transport::client::CallError) -> String {
    match client::plaintext_problem(url).await {
        Some(problem) => problem,
        None => format!("{} [{}]", e.message(), e.reason()),
    }
}

fn token_given_but_refused(view: &ServerView) -> bool {
    view.reachable && view.account.is_none() && view.min_version.is_none()
}
