//! The request side's model of the connection: RESP version, MULTI, CLIENT REPLY, pubsub, and
//! whose replies are owed, in wire order.

use super::PassthroughReason;
use crate::command::{Command, ReplyMode};
use crate::reply_queue::{Expect, ReplyQueue};
use crate::resp::{Frame, FrameKind};

/// What the request side knows about the connection's mode.
#[derive(Debug)]
pub(super) struct Modes {
    pub(super) queue: ReplyQueue,
    pub(super) resp3: bool,
    pub(super) in_multi: bool,
    pub(super) reply_mode: ReplyMode,
    /// Ever subscribed: on RESP2, pubsub-shaped arrays are then pushes, not replies.
    pub(super) subscribed: bool,
    /// Set when a request makes us stop following; applied after the frame loop.
    pub(super) pass_through: Option<PassthroughReason>,
    /// The client sent QUIT: the close that follows is not a reconnect signal.
    pub(super) quitting: bool,
}

impl Modes {
    pub(super) fn on_command(&mut self, frame: &Frame) {
        if self.pass_through.is_some() || frame.kind != FrameKind::Command {
            return;
        }
        let cmd = Command::classify(&frame.capture, self.in_multi);
        if self.in_multi {
            match cmd {
                Command::EndMulti => {
                    self.in_multi = false;
                    self.queue.push(Expect::Client);
                }
                Command::Plain | Command::Multi | Command::Blocking => {
                    self.queue.push(Expect::Client)
                }
                _ => self.pass_through = Some(PassthroughReason::ModeChangeInMulti),
            }
            return;
        }
        // CLIENT REPLY, as Redis applies it (networking.c, clientCommand): SKIP turns into
        // "skip this one" when the next command starts; ON always answers.
        let skipping_this = self.reply_mode == ReplyMode::Skip;
        if skipping_this {
            self.reply_mode = ReplyMode::On;
        }
        let replies = match cmd {
            Command::ClientReply(ReplyMode::On) => {
                self.reply_mode = ReplyMode::On;
                true
            }
            Command::ClientReply(ReplyMode::Off) => {
                self.reply_mode = ReplyMode::Off;
                false
            }
            Command::ClientReply(ReplyMode::Skip) => {
                if self.reply_mode != ReplyMode::Off {
                    self.reply_mode = ReplyMode::Skip;
                }
                false
            }
            _ => self.reply_mode == ReplyMode::On && !skipping_this,
        };
        match cmd {
            // Confirmations are pushes (RESP3) or pubsub arrays (RESP2): never queued replies.
            Command::Pubsub => self.subscribed = true,
            Command::Monitor => self.pass_through = Some(PassthroughReason::Monitor),
            Command::Replication => self.pass_through = Some(PassthroughReason::Replication),
            Command::Quit => {
                self.quitting = true;
                if replies {
                    self.queue.push(Expect::Client);
                }
            }
            _ if !replies => {}
            Command::Blocking => self.queue.push(Expect::ClientBlocking),
            Command::Multi => {
                self.in_multi = true;
                self.queue.push(Expect::Client);
            }
            Command::Hello(Some(v @ (2 | 3))) => self.queue.push(Expect::ClientHello(v)),
            Command::Reset => {
                self.reply_mode = ReplyMode::On;
                self.queue.push(Expect::ClientReset);
            }
            _ => self.queue.push(Expect::Client),
        }
    }
}
