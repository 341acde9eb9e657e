//! The interactive part of `git theta mergetool`: asks, conflict by
//! conflict, which strategy settles each tensor. Generic over
//! `BufRead`/`Write` so that it runs on a terminal and in tests alike.
//!
//! An answer is a strategy name with optional parameters
//! (`ties density=0.5 weight=0.7:0.3`); a trailing `!` (`theirs!`) applies it
//! to this and every remaining conflict; `s` skips the tensor, `q` stops.

use std::io::{self, BufRead, Write};

use super::Conflict;
use super::policy::{self, Configured};
use super::strategy;

/// The user's choices: tensor name and strategy.
pub type Choices = Vec<(String, Configured)>;

/// Asks for each tensor conflict in `conflicts` (whole-file conflicts are
/// only shown). Returns the choices made before the input ended or `q`.
pub fn ask(
    conflicts: &[Conflict],
    input: &mut impl BufRead,
    out: &mut impl Write,
) -> io::Result<Choices> {
    let mut choices = Choices::new();
    let mut for_all: Option<(String, strategy::Params)> = None;
    writeln!(
        out,
        "Strategies: {}. Add NAME=VALUE parameters after the name; end with `!` to apply \
         to all remaining; `s` skips, `q` stops.",
        strategy::names()
    )?;
    for c in conflicts {
        let Some(tensor) = &c.tensor else {
            writeln!(out, "{c} (not settled per tensor)")?;
            continue;
        };
        if let Some((name, params)) = &for_all
            && let Ok(chosen) = policy::configure(name, params, name.clone(), "prompt")
        {
            writeln!(out, "{tensor}: {name} (applied to all remaining)")?;
            choices.push((tensor.clone(), chosen));
            continue;
        }
        loop {
            write!(out, "{tensor}: {}\n  strategy? ", c.reason)?;
            out.flush()?;
            let mut line = String::new();
            if input.read_line(&mut line)? == 0 {
                writeln!(out)?;
                return Ok(choices);
            }
            let line = line.trim();
            match line {
                "" => continue,
                "q" | "quit" => return Ok(choices),
                "s" | "skip" => break,
                _ => {}
            }
            let (line, all) = match line.strip_suffix('!') {
                Some(l) => (l.trim(), true),
                None => (line, false),
            };
            let mut words = line.split_whitespace();
            let name = words.next().unwrap_or_default().to_owned();
            let assignments: Vec<&str> = words.collect();
            let parsed = policy::parse_assignments(&assignments).and_then(|params| {
                policy::configure(&name, &params, name.clone(), "prompt")
                    .map(|c| (c, params))
                    .map_err(|e| e.message)
            });
            match parsed {
                Ok((chosen, params)) => {
                    choices.push((tensor.clone(), chosen));
                    if all {
                        for_all = Some((name, params));
                    }
                    break;
                }
                Err(e) => writeln!(out, "  {e}")?,
            }
        }
    }
    Ok(choices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcs::merge::strategy::{Kind, Side};

    fn conflict(t: &str) -> Conflict {
        Conflict {
            tensor: Some(t.into()),
            reason: "changed differently".into(),
        }
    }

    #[test]
    fn answers_apply_to_one_tensor_or_to_all_remaining() {
        let conflicts = [conflict("a"), conflict("b"), conflict("c"), conflict("d")];
        let mut input = &b"tie\nties densty=1\nties density=0.5\ns\ntheirs!\n"[..];
        let mut out = Vec::new();
        let got = ask(&conflicts, &mut input, &mut out).expect("ask");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("unknown strategy `tie`"), "{text}");
        assert!(text.contains("unknown parameter `densty`"), "{text}");
        let names: Vec<(&str, Kind)> = got
            .iter()
            .map(|(n, c)| (n.as_str(), c.strategy.kind()))
            .collect();
        assert_eq!(
            names,
            [
                ("a", Kind::Compute { needs_base: true }),
                ("c", Kind::Take(Side::Theirs)),
                ("d", Kind::Take(Side::Theirs)),
            ]
        );
        assert!(
            text.contains("d: theirs (applied to all remaining)"),
            "{text}"
        );
    }

    #[test]
    fn end_of_input_or_q_stops() {
        let conflicts = [conflict("a"), conflict("b")];
        let got = ask(&conflicts, &mut &b"ours\n"[..], &mut Vec::new()).expect("ask");
        assert_eq!(got.len(), 1);
        let got = ask(&conflicts, &mut &b"q\nours\n"[..], &mut Vec::new()).expect("ask");
        assert!(got.is_empty());
    }
}
