//! Tokens of the SQL92 subset.

use super::ParseError;

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Float(f64),
    And,
    Or,
    Not,
    Between,
    In,
    Is,
    Null,
    True,
    False,
    Contains,
    StartsWith,
    EndsWith,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    LParen,
    RParen,
    Comma,
    Minus,
    Eof,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub tok: Tok,
    /// Byte offset in the expression, for error messages.
    pub position: usize,
}

fn err(position: usize, message: impl Into<String>) -> ParseError {
    ParseError { position, message: message.into() }
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_' || c == '$'
}

fn is_ident_part(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$' || c == '.'
}

fn keyword(word: &str) -> Option<Tok> {
    let upper = word.to_ascii_uppercase();
    Some(match upper.as_str() {
        "AND" => Tok::And,
        "OR" => Tok::Or,
        "NOT" => Tok::Not,
        "BETWEEN" => Tok::Between,
        "IN" => Tok::In,
        "IS" => Tok::Is,
        "NULL" => Tok::Null,
        "TRUE" => Tok::True,
        "FALSE" => Tok::False,
        "CONTAINS" => Tok::Contains,
        "STARTSWITH" => Tok::StartsWith,
        "ENDSWITH" => Tok::EndsWith,
        _ => return None,
    })
}

pub fn tokenize(src: &str) -> Result<Vec<Token>, ParseError> {
    let mut tokens = Vec::new();
    let mut chars = src.char_indices().peekable();
    while let Some(&(pos, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let single = |tok| Token { tok, position: pos };
        match c {
            '(' | ')' | ',' | '=' | '-' => {
                chars.next();
                tokens.push(single(match c {
                    '(' => Tok::LParen,
                    ')' => Tok::RParen,
                    ',' => Tok::Comma,
                    '=' => Tok::Eq,
                    _ => Tok::Minus,
                }));
            }
            '<' => {
                chars.next();
                let tok = match chars.peek().map(|&(_, c)| c) {
                    Some('=') => {
                        chars.next();
                        Tok::Le
                    }
                    Some('>') => {
                        chars.next();
                        Tok::Ne
                    }
                    _ => Tok::Lt,
                };
                tokens.push(single(tok));
            }
            '>' => {
                chars.next();
                let tok = if chars.peek().map(|&(_, c)| c) == Some('=') {
                    chars.next();
                    Tok::Ge
                } else {
                    Tok::Gt
                };
                tokens.push(single(tok));
            }
            '!' => {
                chars.next();
                if chars.peek().map(|&(_, c)| c) != Some('=') {
                    return Err(err(pos, "`!` must be followed by `=`"));
                }
                chars.next();
                tokens.push(single(Tok::Ne));
            }
            '\'' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err(err(pos, "unterminated string literal")),
                        Some((_, '\'')) => {
                            if chars.peek().map(|&(_, c)| c) == Some('\'') {
                                chars.next();
                                s.push('\'');
                            } else {
                                break;
                            }
                        }
                        Some((_, c)) => s.push(c),
                    }
                }
                tokens.push(single(Tok::Str(s)));
            }
            c if c.is_ascii_digit() || c == '.' => {
                let start = pos;
                let mut end = pos;
                let mut is_float = false;
                while let Some(&(p, c)) = chars.peek() {
                    let exponent_sign = (c == '+' || c == '-')
                        && matches!(src[start..p].chars().last(), Some('e' | 'E'));
                    if c.is_ascii_digit() {
                    } else if c == '.' || c == 'e' || c == 'E' || exponent_sign {
                        is_float = true;
                    } else {
                        break;
                    }
                    end = p + c.len_utf8();
                    chars.next();
                }
                let text = &src[start..end];
                let tok = if is_float {
                    let v: f64 = text.parse().map_err(|_| err(start, format!("bad number {text:?}")))?;
                    Tok::Float(v)
                } else {
                    Tok::Int(text.parse().map_err(|_| err(start, format!("integer {text:?} out of range")))?)
                };
                if let Some(&(p, c)) = chars.peek() {
                    if is_ident_part(c) {
                        return Err(err(p, format!("unexpected {c:?} after number {text:?}")));
                    }
                }
                tokens.push(single(tok));
            }
            c if is_ident_start(c) => {
                let start = pos;
                let mut end = pos;
                while let Some(&(p, c)) = chars.peek() {
                    if !is_ident_part(c) {
                        break;
                    }
                    end = p + c.len_utf8();
                    chars.next();
                }
                let word = &src[start..end];
                tokens.push(single(keyword(word).unwrap_or_else(|| Tok::Ident(word.to_owned()))));
            }
            _ => return Err(err(pos, format!("unexpected character {c:?}"))),
        }
    }
    tokens.push(Token { tok: Tok::Eof, position: src.len() });
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        tokenize(s).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn tokens() {
        assert_eq!(
            toks("a.b>=1.5 AND x<>'it''s' or NOT y<=-2 != ()"),
            [
                Tok::Ident("a.b".into()),
                Tok::Ge,
                Tok::Float(1.5),
                Tok::And,
                Tok::Ident("x".into()),
                Tok::Ne,
                Tok::Str("it's".into()),
                Tok::Or,
                Tok::Not,
                Tok::Ident("y".into()),
                Tok::Le,
                Tok::Minus,
                Tok::Int(2),
                Tok::Ne,
                Tok::LParen,
                Tok::RParen,
                Tok::Eof
            ]
        );
        assert_eq!(toks("1e3 2E-2"), [Tok::Float(1000.0), Tok::Float(0.02), Tok::Eof]);
        assert_eq!(toks("between Between"), [Tok::Between, Tok::Between, Tok::Eof]);
    }

    #[test]
    fn lexical_errors_have_positions() {
        assert_eq!(tokenize("a = 'x").unwrap_err().position, 4);
        assert_eq!(tokenize("a # 1").unwrap_err().position, 2);
        assert_eq!(tokenize("a = 12abc").unwrap_err().position, 6);
        assert!(tokenize("a = 99999999999999999999").is_err());
        assert!(tokenize("a = 1.2.3").is_err());
        assert!(tokenize("a ! b").is_err());
    }
}
