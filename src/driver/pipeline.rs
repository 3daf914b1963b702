//! Pipeline syntax: a comma-separated list of pass names; `fixpoint(a,b,...)` repeats its
//! members until none of them changes anything (capped); `none` is the empty pipeline; a named
//! pipeline (see `passes::named_pipeline`) expands in place.
//!
//! ```text
//! pipeline := 'none' | item (',' item)*
//! item     := pass-name | pipeline-name | 'fixpoint' ('<' N '>')? '(' item (',' item)* ')'
//! ```

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Pass(String),
    Fixpoint {
        steps: Vec<Step>,
        max_iterations: usize,
    },
}

pub const DEFAULT_FIXPOINT_CAP: usize = 32;

/// Parses a pipeline. Pass names are checked against `known`; named pipelines are expanded with
/// `expand`.
pub fn parse(
    text: &str,
    known: &dyn Fn(&str) -> bool,
    expand: &dyn Fn(&str) -> Option<&'static str>,
) -> Result<Vec<Step>> {
    let t = text.trim();
    if t == "none" || t.is_empty() {
        return Ok(Vec::new());
    }
    let mut p = Parser {
        s: t.as_bytes(),
        i: 0,
        src: t,
        known,
        expand,
        depth: 0,
    };
    let steps = p.list()?;
    p.ws();
    if p.i != p.s.len() {
        return Err(p.err("unexpected text"));
    }
    Ok(steps)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    src: &'a str,
    known: &'a dyn Fn(&str) -> bool,
    expand: &'a dyn Fn(&str) -> Option<&'static str>,
    depth: usize,
}

impl Parser<'_> {
    fn err(&self, msg: &str) -> Error {
        Error::Usage(format!(
            "--passes '{}': {msg} at character {}",
            self.src,
            self.i + 1
        ))
    }
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn ident(&mut self) -> Result<String> {
        self.ws();
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || matches!(self.s[self.i], b'-' | b'_'))
        {
            self.i += 1;
        }
        if start == self.i {
            return Err(self.err("expected a pass name"));
        }
        Ok(self.src[start..self.i].to_string())
    }
    fn list(&mut self) -> Result<Vec<Step>> {
        let mut out = Vec::new();
        loop {
            out.extend(self.item()?);
            self.ws();
            if self.i < self.s.len() && self.s[self.i] == b',' {
                self.i += 1;
            } else {
                return Ok(out);
            }
        }
    }
    fn item(&mut self) -> Result<Vec<Step>> {
        let name = self.ident()?;
        self.ws();
        if name == "fixpoint" {
            let mut cap = DEFAULT_FIXPOINT_CAP;
            if self.i < self.s.len() && self.s[self.i] == b'<' {
                self.i += 1;
                let start = self.i;
                while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
                    self.i += 1;
                }
                cap = self.src[start..self.i]
                    .parse()
                    .map_err(|_| self.err("expected an iteration cap"))?;
                if cap == 0 {
                    return Err(self.err("the iteration cap must be at least 1"));
                }
                self.ws();
                if self.i >= self.s.len() || self.s[self.i] != b'>' {
                    return Err(self.err("expected '>'"));
                }
                self.i += 1;
                self.ws();
            }
            if self.i >= self.s.len() || self.s[self.i] != b'(' {
                return Err(self.err("expected '(' after fixpoint"));
            }
            self.i += 1;
            let steps = self.list()?;
            self.ws();
            if self.i >= self.s.len() || self.s[self.i] != b')' {
                return Err(self.err("expected ')'"));
            }
            self.i += 1;
            return Ok(vec![Step::Fixpoint {
                steps,
                max_iterations: cap,
            }]);
        }
        if (self.known)(&name) {
            return Ok(vec![Step::Pass(name)]);
        }
        if let Some(body) = (self.expand)(&name) {
            if self.depth > 8 {
                return Err(self.err("named pipelines nest too deeply"));
            }
            self.depth += 1;
            let r = parse(body, self.known, self.expand);
            self.depth -= 1;
            return r;
        }
        Err(Error::Usage(format!(
            "unknown pass '{name}' in --passes (run `graft passes` to list them)"
        )))
    }
}

/// Prints steps back in the pipeline syntax.
pub fn display(steps: &[Step]) -> String {
    steps
        .iter()
        .map(|s| match s {
            Step::Pass(n) => n.clone(),
            Step::Fixpoint {
                steps,
                max_iterations,
            } => {
                if *max_iterations == DEFAULT_FIXPOINT_CAP {
                    format!("fixpoint({})", display(steps))
                } else {
                    format!("fixpoint<{max_iterations}>({})", display(steps))
                }
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(n: &str) -> bool {
        ["dce", "cse", "eliminate-identity"].contains(&n)
    }
    fn expand(n: &str) -> Option<&'static str> {
        (n == "cleanup").then_some("fixpoint(dce,cse)")
    }

    #[test]
    fn parses_lists_and_fixpoints() {
        let s = parse(
            "dce, fixpoint<4>(cse,eliminate-identity),dce",
            &known,
            &expand,
        )
        .unwrap();
        assert_eq!(display(&s), "dce,fixpoint<4>(cse,eliminate-identity),dce");
        assert!(parse("none", &known, &expand).unwrap().is_empty());
        assert_eq!(
            display(&parse("cleanup", &known, &expand).unwrap()),
            "fixpoint(dce,cse)"
        );
    }

    #[test]
    fn rejects_bad_pipelines() {
        for bad in ["dce,", "fixpoint(dce", "nope", "fixpoint<0>(dce)", "dce)"] {
            let e = parse(bad, &known, &expand).unwrap_err().to_string();
            assert!(
                e.contains("--passes") || e.contains("unknown pass"),
                "{bad}: {e}"
            );
        }
    }
}
