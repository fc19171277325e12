//! `${VAR}` and `${VAR:-default}` in flow-file values.

/// A finding in a value: `(byte offset, length, message)`.
pub(crate) type Finding = (usize, usize, String);

/// Replace `${VAR}` and `${VAR:-default}` in `text` using `env`; `$${` writes a literal `${`.
/// Errors are `(byte offset, length, message)`, every one of them.
pub fn interpolate(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<(usize, usize, String)>> {
    let (out, mut errors, unset) = expand(text, env, false);
    errors.extend(unset);
    errors.sort_by_key(|e| e.0);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Expand `text`; returns the text, the errors, and the unset variables without a default
/// (`(offset, length, message)` each). With `keep_unset`, an unset variable stays as written
/// (`${VAR}`) in the text; without, it is left out.
pub(crate) fn expand(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    keep_unset: bool,
) -> (String, Vec<Finding>, Vec<Finding>) {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut unset = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(stripped) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = stripped;
            offset += i + 3;
            continue;
        }
        if !after.starts_with("${") {
            out.push('$');
            rest = &after[1..];
            offset += i + 1;
            continue;
        }
        let Some(end) = after.find('}') else {
            errors.push((offset + i, after.len(), "unterminated `${`".to_owned()));
            rest = "";
            break;
        };
        let inner = &after[2..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        let valid = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            errors.push((
                offset + i,
                end + 1,
                format!("invalid variable name `{name}`"),
            ));
        } else {
            match (env(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    if keep_unset {
                        out.push_str(&after[..end + 1]);
                    }
                    unset.push((
                        offset + i,
                        end + 1,
                        format!("environment variable `{name}` is not set"),
                    ))
                }
            }
        }
        rest = &after[end + 1..];
        offset += i + end + 1;
    }
    out.push_str(rest);
    (out, errors, unset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "OUT" => Some("/tmp/o".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_variables_and_defaults() {
        assert_eq!(
            interpolate("${OUT}/a.jsonl", &env).as_deref(),
            Ok("/tmp/o/a.jsonl")
        );
        assert_eq!(
            interpolate("${NOPE:-x}-${OUT}", &env).as_deref(),
            Ok("x-/tmp/o")
        );
        assert_eq!(interpolate("${EMPTY:-x}", &env).as_deref(), Ok(""));
        assert_eq!(interpolate("${NOPE:-}", &env).as_deref(), Ok(""));
        assert_eq!(
            interpolate("cost $5 $${OUT}", &env).as_deref(),
            Ok("cost $5 ${OUT}")
        );
    }

    #[test]
    fn reports_every_unset_variable_with_its_offset() {
        let errs = interpolate("a ${A} b ${B}", &env).expect_err("unset");
        assert_eq!(errs.len(), 2);
        assert_eq!((errs[0].0, errs[0].1), (2, 4));
        assert_eq!((errs[1].0, errs[1].1), (9, 4));
        assert!(errs[1].2.contains("`B`"));
        assert!(interpolate("${OUT", &env).is_err());
        assert!(interpolate("${1X}", &env).is_err());
    }

    #[test]
    fn unset_variables_can_be_kept_as_written() {
        let (out, errors, unset) = expand("${A}/x-${OUT}-${B:-b}", &env, true);
        assert_eq!(out, "${A}/x-/tmp/o-b");
        assert!(errors.is_empty());
        assert_eq!(unset.len(), 1);
        assert_eq!((unset[0].0, unset[0].1), (0, 4));
        let (_, errors, unset) = expand("${A} ${1X}", &env, true);
        assert_eq!((errors.len(), unset.len()), (1, 1));
    }
}
