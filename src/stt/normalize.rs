//! Text normalisation for matching transcripts: lower case, punctuation
//! removed, digits spelled out as words, whitespace folded.

/// Normalises `text` for comparison: "It's 10 meters!" → "its ten meters".
pub fn normalize(text: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    for raw in text.split_whitespace() {
        let cleaned: String = raw
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == '\'' || *c == '-')
            .flat_map(|c| c.to_lowercase())
            .filter(|c| *c != '\'')
            .collect();
        for part in cleaned.split('-').filter(|p| !p.is_empty()) {
            if part.chars().all(|c| c.is_ascii_digit()) {
                match part.parse::<u64>() {
                    Ok(n) => words.extend(number_words(n)),
                    Err(_) => words.push(part.to_string()),
                }
            } else {
                words.push(part.to_string());
            }
        }
    }
    words.join(" ")
}

pub(crate) const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
pub(crate) const TENS: [&str; 10] = [
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

/// Spells a number in English words ("105" → "one hundred five").
pub fn number_words(n: u64) -> Vec<String> {
    let mut out = Vec::new();
    spell(n, &mut out);
    out
}

fn spell(n: u64, out: &mut Vec<String>) {
    const SCALES: [(u64, &str); 4] = [
        (1_000_000_000_000, "trillion"),
        (1_000_000_000, "billion"),
        (1_000_000, "million"),
        (1_000, "thousand"),
    ];
    if n < 20 {
        out.push(ONES[n as usize].to_string());
        return;
    }
    if n < 100 {
        out.push(TENS[(n / 10) as usize].to_string());
        if n % 10 != 0 {
            out.push(ONES[(n % 10) as usize].to_string());
        }
        return;
    }
    if n < 1000 {
        out.push(ONES[(n / 100) as usize].to_string());
        out.push("hundred".to_string());
        if n % 100 != 0 {
            spell(n % 100, out);
        }
        return;
    }
    for (scale, name) in SCALES {
        if n >= scale {
            spell(n / scale, out);
            out.push(name.to_string());
            if n % scale != 0 {
                spell(n % scale, out);
            }
            return;
        }
    }
}

/// Word error rate of `hypothesis` against `reference`, both normalised first:
/// (substitutions + deletions + insertions) / reference words. Returns the
/// error count and the reference word count.
pub fn word_errors(reference: &str, hypothesis: &str) -> (usize, usize) {
    let r: Vec<String> = normalize(reference)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let h: Vec<String> = normalize(hypothesis)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let sub = prev[j] + usize::from(rw != hw);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    (prev[h.len()], r.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_punctuation_and_numbers() {
        assert_eq!(normalize("It's 10 meters!"), "its ten meters");
        assert_eq!(normalize("  Paris,   France. "), "paris france");
        assert_eq!(normalize("1,234"), "one thousand two hundred thirty four");
        assert_eq!(normalize("twenty-one"), "twenty one");
        assert_eq!(normalize(""), "");
    }

    #[test]
    fn word_errors_counts_edits() {
        assert_eq!(word_errors("the cat sat", "the cat sat"), (0, 3));
        assert_eq!(word_errors("the cat sat", "the bat sat down"), (2, 3));
        assert_eq!(word_errors("the cat sat", ""), (3, 3));
    }
}
