//! Human-readable output of the client commands.

use warden_control::EventLine;
use warden_control::protocol::{
    DeadLettersView, HistoryEntryView, HistoryView, ListView, OutboxView, OutgoingView,
    SessionView, WebhooksView,
};

/// A session as a short block of text.
pub fn session(s: &SessionView) -> String {
    let mut out = format!("{}  ({})\n", s.token, s.name);
    out += &format!("  state:     {} since {}\n", s.state, s.state_since);
    if let Some(reason) = &s.reason {
        out += &format!("  reason:    {reason}\n");
    }
    match (&s.jid, &s.account_name) {
        (Some(jid), Some(name)) => out += &format!("  account:   {jid} ({name})\n"),
        (Some(jid), None) => out += &format!("  account:   {jid}\n"),
        _ => out += "  account:   not linked\n",
    }
    out += &format!("  attempts:  {}\n", s.attempts);
    out += &format!("  desired:   {}\n", s.desired);
    if let Some(proxy) = &s.proxy {
        out += &format!("  proxy:     {proxy}\n");
    }
    if let Some(at) = &s.next_retry_at {
        out += &format!("  next try:  {at}\n");
    }
    if let Some(until) = &s.banned_until {
        out += &format!("  banned:    until {until}\n");
    }
    if let Some(code) = &s.pair_code {
        out += &format!("  pair code: {code}\n");
    }
    if s.qr.is_some() {
        out += "  QR code:   on show (`warden start` draws it)\n";
    }
    if let Some(why) = &s.why {
        out += &format!(
            "  why:       {} ended {} ({}); then {}{}\n",
            why.from,
            why.at,
            why.reason.as_deref().unwrap_or("no reason given"),
            why.decision,
            why.next_retry_at
                .as_deref()
                .map(|at| format!(", next try {at}"))
                .unwrap_or_default()
        );
    }
    out
}

/// Every webhook, one line each.
pub fn webhooks(v: &WebhooksView) -> String {
    if v.webhooks.is_empty() {
        return "no webhooks ([[webhooks]] in daemon.toml)\n".into();
    }
    v.webhooks
        .iter()
        .map(|w| {
            format!(
                "{}  {}  events={}  {}  delivered={} retried={} dead={} queued={}\n",
                w.name,
                w.url,
                w.events.join(","),
                if w.signed { "signed" } else { "UNSIGNED" },
                w.delivered,
                w.retried,
                w.dead,
                w.queued
            )
        })
        .collect()
}

/// Dead letters, one line each.
pub fn dead_letters(v: &DeadLettersView) -> String {
    if v.dead.is_empty() {
        return "no dead letters\n".into();
    }
    v.dead
        .iter()
        .map(|d| {
            format!(
                "{:>8} {} {} {} {}: {} ({} attempts)\n",
                d.seq, d.failed_at, d.hook, d.token, d.kind, d.reason, d.attempts
            )
        })
        .collect()
}

/// A session's history, one line per entry.
pub fn history(h: &HistoryView) -> String {
    if h.entries.is_empty() {
        return format!("{}: no history\n", h.token);
    }
    h.entries.iter().map(|e| history_entry(e) + "\n").collect()
}

/// One history entry as a line: number, time, kind and what happened.
pub fn history_entry(e: &HistoryEntryView) -> String {
    let text = |field: &str| {
        e.data
            .get(field)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let what = match e.kind.as_str() {
        "session.status" => {
            let mut what = format!(
                "{} -> {}",
                text("from").unwrap_or_else(|| "(new)".into()),
                text("to").unwrap_or_default()
            );
            if let Some(reason) = text("reason") {
                what += &format!(" ({reason})");
            }
            if let Some(attempts) = e.data.get("attempts").and_then(|v| v.as_u64())
                && attempts > 0
            {
                what += &format!(" attempts={attempts}");
            }
            if let Some(at) = text("next_retry_at") {
                what += &format!(" next try {at}");
            }
            if let Some(until) = text("banned_until") {
                what += &format!(" banned until {until}");
            }
            what
        }
        "session.qr" => "QR code issued".into(),
        "session.operation" => format!(
            "{} asked through {}",
            text("op").unwrap_or_default(),
            text("by").unwrap_or_default()
        ),
        "session.pair_code" => "pairing code issued".into(),
        "message" => format!(
            "message from {}: {}",
            text("sender").unwrap_or_default(),
            text("text").unwrap_or_else(|| "(no text)".into())
        ),
        "message.status" => match text("new_chats_paused_until") {
            Some(until) => format!("new chats paused until {until}"),
            None => format!(
                "message {} to {}: {}",
                text("message_id").unwrap_or_default(),
                text("to").unwrap_or_default(),
                text("status").unwrap_or_default()
            ),
        },
        other => other.to_owned(),
    };
    let repeats = if e.repeats > 1 {
        format!("  x{} since {}", e.repeats, e.first_at)
    } else {
        String::new()
    };
    format!("{:>8} {} {what}{repeats}", e.seq, e.at)
}

/// Every session as a table, with counts per state.
pub fn list(list: &ListView) -> String {
    if list.sessions.is_empty() {
        return "no sessions; create one with `warden create --token NAME`\n".into();
    }
    let mut rows = vec![[
        "TOKEN".to_string(),
        "NAME".into(),
        "STATE".into(),
        "ATTEMPTS".into(),
        "ACCOUNT".into(),
        "REASON".into(),
    ]];
    for s in &list.sessions {
        rows.push([
            s.token.clone(),
            s.name.clone(),
            s.state.clone(),
            s.attempts.to_string(),
            s.jid.clone().unwrap_or_else(|| "-".into()),
            s.reason.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out += cells.join("  ").trim_end();
        out.push('\n');
    }
    let counts: Vec<String> = list
        .counts
        .iter()
        .map(|(state, n)| format!("{n} {state}"))
        .collect();
    out += &format!(
        "\n{} sessions: {}\n",
        list.sessions.len(),
        counts.join(", ")
    );
    out
}

/// A QR code drawn with Unicode half blocks, for a terminal.
pub fn qr(code: &str) -> String {
    match qrcode::QrCode::new(code.as_bytes()) {
        Ok(qr) => qr
            .render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
        Err(e) => format!("(cannot draw this QR code: {e})"),
    }
}

/// One outgoing message, as one line.
pub fn outgoing(m: &OutgoingView) -> String {
    let mut line = format!("message {} to {}: {}", m.message_id, m.to, m.status);
    if m.key != m.message_id {
        line += &format!(" (key {})", m.key);
    }
    if let Some(reason) = &m.reason {
        line += &format!(": {reason}");
    }
    line + "\n"
}

/// A session's outbox, one message a line.
pub fn outbox(o: &OutboxView) -> String {
    let mut out = String::new();
    if let Some(until) = &o.new_chats_paused_until {
        out += &format!("new chats paused until {until} (WhatsApp refused a message with 463)\n");
    }
    if o.messages.is_empty() {
        out += &format!("{}: nothing queued or failed\n", o.token);
    }
    for m in &o.messages {
        out += &format!("{} ", m.created_at);
        out += &outgoing(m);
    }
    out
}

/// One watch event as a line of text (QR codes are not drawn here).
pub fn event(event: &EventLine) -> String {
    match event {
        EventLine::Session { session: s } => {
            let mut line = format!("{:<20} {:<16} attempts={}", s.token, s.state, s.attempts);
            if let Some(reason) = &s.reason {
                line += &format!("  {reason}");
            }
            line
        }
        EventLine::Qr {
            token,
            expires_in_secs,
            ..
        } => format!("{token:<20} QR code issued (valid {expires_in_secs} s)"),
        EventLine::PairCode { token, code } => format!("{token:<20} pairing code {code}"),
        EventLine::Message { token, message } => format!(
            "{token:<20} message from {}: {}",
            message.sender,
            message.text.as_deref().unwrap_or("(no text)")
        ),
        EventLine::MessageStatus { token, message } => format!(
            "{token:<20} message {} to {}: {}{}",
            message.message_id,
            message.to,
            message.status,
            message
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
        EventLine::NewChatsPaused { token, until } => format!(
            "{token:<20} WhatsApp refused a message to a new chat (463): new chats paused until {until}"
        ),
        EventLine::Removed { token } => format!("{token:<20} deleted"),
        EventLine::History { entries, .. } => entries
            .iter()
            .map(history_entry)
            .collect::<Vec<_>>()
            .join("\n"),
        EventLine::Closed { reason } => format!("stream closed by the daemon: {reason}"),
    }
}
