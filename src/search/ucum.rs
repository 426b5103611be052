//! UCUM units for quantity search (https://hl7.org/fhir/R4/search.html#quantity).
//!
//! A search such as `value-quantity=gt70|http://unitsofmeasure.org|kg` must also match a stored
//! `154 [lb_av]`, so both sides are brought to a canonical form: the value in the canonical unit
//! of its dimension, plus that unit's code. Two quantities are comparable exactly when their
//! canonical codes are equal; the values are then in the same unit.
//!
//! The parser covers the UCUM syntax (https://ucum.org/ucum#section-Syntax-Rules, §§7–10):
//! components joined by `.` and `/` and evaluated strictly left to right, a leading `/`, integer
//! exponents (`m2`, `s-1`), integer factors (`10*3` is an atom, `1000` a factor), parenthesised
//! terms, square brackets as part of atoms (§5) and annotations in curly braces, which carry no
//! meaning (§6, §12). The atoms are the subset of the UCUM tables
//! (https://ucum.org/ucum#section-Tables-of-Terminal-Symbols) seen in vital signs and common lab
//! results; like the tables, each derived atom is a factor times a unit term of earlier atoms.
//!
//! The canonical code lists the base units with a non-zero exponent in the fixed order
//! `g mol m s K C cd rad`, the exponent written when it is not 1, joined by `.`: `g.m-1.s-2`
//! for pressure, `s-1` for `/min`, `g.m-3` for `mg/dL`; `1` when dimensionless. It is itself a
//! UCUM code with the same meaning, so `canonical` is idempotent on it.
//!
//! Deliberate deviations from UCUM, chosen for clinical search:
//! - `mol` is a base unit. UCUM defines it as the pure number 6.0221367e23
//!   (https://ucum.org/ucum#section-Derived-Unit-Atoms), which would make `mmol/L` commensurable
//!   with counts per volume such as `10*9/L`; keeping it apart also keeps `mmol/L` and `mg/dL`
//!   (glucose) apart, which UCUM does too (they differ in mass).
//! - Units on non-ratio scales (https://ucum.org/ucum#section-Special-Units-on-non-ratio-Scales)
//!   are only `Cel` and `[degF]`, and only alone (an annotation aside): no prefix, exponent or
//!   product, since an affine scale has no multiplication (§11 ■4).
//! - Arbitrary units (`[iU]`, https://ucum.org/ucum#section-Arbitrary-Units) and the
//!   case-insensitive symbols are unknown.

use std::collections::HashMap;
use std::f64::consts::PI;
use std::sync::LazyLock;

/// The UCUM system URI.
pub const UCUM: &str = "http://unitsofmeasure.org";

/// Base units and the order of their exponents in [`Dims`] and in canonical codes
/// (https://ucum.org/ucum#section-Base-Units, plus `mol`, see the module notes).
const BASE: [&str; 8] = ["g", "mol", "m", "s", "K", "C", "cd", "rad"];

/// Exponents of the base units, in [`BASE`] order.
type Dims = [i32; 8];

/// Kelvin as [`Dims`].
const KELVIN: Dims = [0, 0, 0, 0, 1, 0, 0, 0];

/// Prefixes (https://ucum.org/ucum#section-Prefixes) and their factors. `da` comes first
/// because §4 ■4 takes the longest prefix whose remainder is a metric atom.
const PREFIXES: [&str; 20] = [
    "da", "Y", "Z", "E", "P", "T", "G", "M", "k", "h", "d", "c", "m", "u", "n", "p", "f", "a", "z",
    "y",
];
const PREFIX_FACTORS: [f64; 20] = [
    1e1, 1e24, 1e21, 1e18, 1e15, 1e12, 1e9, 1e6, 1e3, 1e2, 1e-1, 1e-2, 1e-3, 1e-6, 1e-9, 1e-12,
    1e-15, 1e-18, 1e-21, 1e-24,
];

/// Derived atoms as `(code, metric, factor, definition)`: `code` is `factor` times the unit term
/// `definition`, which may only use atoms defined above it. Values are those of the UCUM tables
/// (https://ucum.org/ucum#section-Derived-Unit-Atoms and #section-Customary-Unit-Atoms).
const DERIVED: &[(&str, bool, f64, &str)] = &[
    // Dimensionless.
    ("10*", false, 10.0, "1"),
    ("[pi]", false, PI, "1"),
    ("%", false, 0.01, "1"),
    ("[ppm]", false, 1e-6, "1"),
    // Time: only the second is metric (§11 comment); `mo` and `a` are the Julian mean.
    ("min", false, 60.0, "s"),
    ("h", false, 60.0, "min"),
    ("d", false, 24.0, "h"),
    ("wk", false, 7.0, "d"),
    ("a_j", false, 365.25, "d"),
    ("a", false, 1.0, "a_j"),
    ("mo_j", false, 1.0 / 12.0, "a_j"),
    ("mo", false, 1.0, "mo_j"),
    ("Hz", true, 1.0, "s-1"),
    // Length and volume.
    ("[in_i]", false, 2.54, "cm"),
    ("[ft_i]", false, 12.0, "[in_i]"),
    ("[mi_i]", false, 5280.0, "[ft_i]"),
    ("L", true, 1.0, "dm3"),
    ("l", true, 1.0, "dm3"),
    ("[gal_us]", false, 231.0, "[in_i]3"),
    ("[foz_us]", false, 1.0 / 128.0, "[gal_us]"),
    // Mass: the avoirdupois pound is 7000 grains of 64.79891 mg.
    ("t", true, 1e3, "kg"),
    ("[gr]", false, 64.79891, "mg"),
    ("[lb_av]", false, 7000.0, "[gr]"),
    ("[oz_av]", false, 1.0 / 16.0, "[lb_av]"),
    ("[stone_av]", false, 14.0, "[lb_av]"),
    // Mechanics.
    ("N", true, 1.0, "kg.m/s2"),
    ("Pa", true, 1.0, "N/m2"),
    ("bar", true, 1e5, "Pa"),
    ("atm", false, 101325.0, "Pa"),
    ("m[Hg]", true, 133.322, "kPa"),
    ("m[H2O]", true, 9.80665, "kPa"),
    ("[in_i'Hg]", false, 1.0, "m[Hg].[in_i]/m"),
    ("J", true, 1.0, "N.m"),
    ("W", true, 1.0, "J/s"),
    ("cal_th", true, 4.184, "J"),
    ("cal", true, 1.0, "cal_th"),
    ("[Cal]", false, 1.0, "kcal_th"),
    // Amount of substance and catalytic activity.
    ("eq", true, 1.0, "mol"),
    ("osm", true, 1.0, "mol"),
    ("kat", true, 1.0, "mol/s"),
    ("U", true, 1.0, "umol/min"),
    // Angle.
    ("deg", false, PI / 180.0, "rad"),
];

/// Affine temperature units as `(code, offset, scale)`: kelvin = (value + offset) × scale
/// (https://ucum.org/ucum#section-Special-Units-on-non-ratio-Scales).
const SPECIAL: [(&str, f64, f64); 2] = [("Cel", 273.15, 1.0), ("[degF]", 459.67, 5.0 / 9.0)];

/// A unit as a factor to the base units and their exponents. `offset` is set only for the affine
/// units of [`SPECIAL`], which cannot be combined with anything.
#[derive(Debug, Clone, Copy)]
struct Unit {
    factor: f64,
    dims: Dims,
    offset: Option<f64>,
}

const fn ratio(factor: f64, dims: Dims) -> Unit {
    Unit {
        factor,
        dims,
        offset: None,
    }
}

impl Unit {
    const ONE: Unit = ratio(1.0, [0; 8]);

    fn scaled(self, by: f64) -> Unit {
        Unit {
            factor: self.factor * by,
            ..self
        }
    }

    /// `self` times `other` raised to `sign` (1 or -1). Exponents are checked because codes come
    /// from requests and stored data: overflow is a malformed code, never a panic.
    fn times(self, other: Unit, sign: i32) -> Option<Unit> {
        if self.offset.is_some() || other.offset.is_some() {
            return None;
        }
        let mut dims = self.dims;
        for (d, o) in dims.iter_mut().zip(other.dims) {
            *d = d.checked_add(o.checked_mul(sign)?)?;
        }
        Some(ratio(self.factor * other.factor.powi(sign), dims))
    }

    /// `self` to the power `exp`; a prefix is raised with its atom (§9 ■2).
    fn pow(self, exp: i32) -> Option<Unit> {
        if exp == 1 {
            return Some(self);
        }
        let mut dims = self.dims;
        for d in &mut dims {
            *d = d.checked_mul(exp)?;
        }
        self.offset
            .is_none()
            .then(|| ratio(self.factor.powi(exp), dims))
    }
}

/// Unit atoms with their meaning and whether they are metric, i.e. take a prefix (§11).
type Atoms = HashMap<&'static str, (Unit, bool)>;

static ATOMS: LazyLock<Atoms> = LazyLock::new(build_atoms);

fn build_atoms() -> Atoms {
    let mut atoms = Atoms::new();
    for (i, code) in BASE.into_iter().enumerate() {
        let mut dims = [0; 8];
        dims[i] = 1;
        atoms.insert(code, (ratio(1.0, dims), true));
    }
    for &(code, metric, factor, definition) in DERIVED {
        // A row whose definition does not resolve is left out; a test checks there is none.
        if let Some(unit) = parse(definition, &atoms) {
            atoms.insert(code, (unit.scaled(factor), metric));
        }
    }
    for (code, offset, scale) in SPECIAL {
        let unit = Unit {
            offset: Some(offset),
            ..ratio(scale, KELVIN)
        };
        // Not metric here: a prefix on an affine unit would scale the value, not the unit (§11).
        atoms.insert(code, (unit, false));
    }
    atoms
}

/// `value` in `code` converted to the canonical unit of its dimension, with that canonical unit's
/// code: e.g. `canonical(154.0, "[lb_av]")` is about `(69853.2, "g")` and `canonical(37.0, "Cel")`
/// is `(310.15, "K")`. `None` when the unit is unknown or malformed, or the result is not finite.
/// See the module documentation for the syntax covered and the form of the canonical code.
pub fn canonical(value: f64, code: &str) -> Option<(f64, String)> {
    let unit = parse(code, &ATOMS)?;
    let converted = (value + unit.offset.unwrap_or(0.0)) * unit.factor;
    converted
        .is_finite()
        .then(|| (converted, canonical_code(&unit.dims)))
}

fn canonical_code(dims: &Dims) -> String {
    let parts: Vec<String> = BASE
        .iter()
        .zip(dims)
        .filter(|(_, exp)| **exp != 0)
        .map(|(base, exp)| match exp {
            1 => (*base).to_string(),
            _ => format!("{base}{exp}"),
        })
        .collect();
    if parts.is_empty() {
        "1".to_string()
    } else {
        parts.join(".")
    }
}

/// Parses a whole code against `atoms`.
fn parse(code: &str, atoms: &Atoms) -> Option<Unit> {
    // §3 ■1: UCUM codes are 7-bit ASCII, which also makes every byte offset a char boundary.
    if code.is_empty() || !code.is_ascii() {
        return None;
    }
    let mut parser = Parser {
        code,
        pos: 0,
        atoms,
    };
    // §7 ■3: a leading solidus inverts the component that directly follows it.
    let first = if parser.eat(b'/') {
        Unit::ONE.times(parser.component()?, -1)?
    } else {
        parser.component()?
    };
    let unit = parser.term_rest(first)?;
    (parser.pos == code.len() && unit.factor.is_normal()).then_some(unit)
}

struct Parser<'a> {
    code: &'a str,
    pos: usize,
    atoms: &'a Atoms,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.code.as_bytes().get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.peek() == Some(byte);
        self.pos += usize::from(found);
        found
    }

    /// The rest of a term after its first component: §7 ■4, `.` and `/` have the same
    /// precedence and apply left to right, so `g/m.s` is `g.s/m`.
    fn term_rest(&mut self, mut acc: Unit) -> Option<Unit> {
        loop {
            let sign = match self.peek() {
                Some(b'.') => 1,
                Some(b'/') => -1,
                _ => return Some(acc),
            };
            self.pos += 1;
            acc = acc.times(self.component()?, sign)?;
        }
    }

    /// A parenthesised term (§10), or a symbol with an optional exponent and annotation, or an
    /// annotation alone, which is the unity (§6 ■4).
    fn component(&mut self) -> Option<Unit> {
        if self.eat(b'(') {
            let first = self.component()?;
            let unit = self.term_rest(first)?;
            return self.eat(b')').then_some(unit);
        }
        let start = self.pos;
        while let Some(byte) = self.peek() {
            match byte {
                b'.' | b'/' | b'(' | b')' | b'{' | b'}' => break,
                // §5: brackets belong to the atom, come in pairs and do not nest; anything
                // inside, including `.` and `/`, is part of the symbol.
                b'[' => self.pos += 1 + self.closing(b']', b'[')?,
                _ => self.pos += 1,
            }
        }
        let symbol = self.code.get(start..self.pos)?;
        let annotated = self.peek() == Some(b'{');
        if annotated {
            // §6: an annotation means nothing; it may hold any of the characters 33–126.
            self.pos += 1 + self.closing(b'}', b'{')?;
        }
        if symbol.is_empty() {
            return annotated.then_some(Unit::ONE);
        }
        self.annotatable(symbol)
    }

    /// The length up to and including `close` of the group opened at `pos`: `None` when it is
    /// unterminated, nested (contains `open`) or holds a character outside 33–126.
    fn closing(&self, close: u8, open: u8) -> Option<usize> {
        let inner = self.code.as_bytes().get(self.pos + 1..)?;
        let len = inner.iter().position(|&b| b == close)?;
        let valid = |b: &u8| (33..=126).contains(b) && *b != open;
        inner.get(..len)?.iter().all(valid).then_some(len + 1)
    }

    /// A factor (§8), or a simple unit with an optional signed exponent (§9). `2+10` is 2^10.
    fn annotatable(&self, symbol: &str) -> Option<Unit> {
        if symbol.bytes().all(|b| b.is_ascii_digit()) {
            return factor(symbol);
        }
        let mut split = symbol.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        // A sign belongs to the exponent: atoms never contain `+` or `-` (§3 ■2).
        if symbol
            .get(..split)
            .is_some_and(|head| head.ends_with(['+', '-']))
        {
            split -= 1;
        }
        let (body, exponent) = symbol.split_at(split);
        let exp = match exponent {
            "" => 1,
            digits => digits.parse().ok()?,
        };
        let base = if body.bytes().all(|b| b.is_ascii_digit()) {
            factor(body)?
        } else {
            self.simple_unit(body)?
        };
        base.pow(exp)
    }

    /// §4 ■4: the longest prefix whose remainder is a metric atom, else the whole symbol as an
    /// atom. This is what makes `cd` the candela rather than a centi-day (`d` is not metric).
    fn simple_unit(&self, symbol: &str) -> Option<Unit> {
        for (prefix, scale) in PREFIXES.into_iter().zip(PREFIX_FACTORS) {
            let atom = symbol.strip_prefix(prefix).and_then(|r| self.atoms.get(r));
            if let Some(&(unit, true)) = atom {
                return Some(unit.scaled(scale));
            }
        }
        self.atoms.get(symbol).map(|&(unit, _)| unit)
    }
}

/// A positive integer used as a unit (§8); zero is not a unit.
fn factor(digits: &str) -> Option<Unit> {
    let factor: f64 = digits.parse().ok()?;
    (factor > 0.0).then(|| Unit::ONE.scaled(factor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(value: f64, code: &str) -> (f64, String) {
        canonical(value, code).unwrap_or_else(|| panic!("{code:?} not recognised"))
    }

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * a.abs().max(b.abs()).max(f64::MIN_POSITIVE)
    }

    /// `value` in `code` is `expected` in the canonical unit `unit`.
    fn is(value: f64, code: &str, expected: f64, unit: &str) {
        let (got, got_unit) = canon(value, code);
        assert_eq!(got_unit, unit, "{value} {code}");
        assert!(close(got, expected, 1e-9), "{value} {code}: {got}");
    }

    /// Both quantities have the same canonical unit and value within `rel`.
    fn equiv(a: (f64, &str), b: (f64, &str), rel: f64) {
        let (ca, cb) = (canon(a.0, a.1), canon(b.0, b.1));
        assert_eq!(ca.1, cb.1, "{a:?} vs {b:?}");
        assert!(close(ca.0, cb.0, rel), "{a:?} is {ca:?}, {b:?} is {cb:?}");
    }

    #[test]
    fn every_table_row_resolves() {
        for (code, ..) in DERIVED {
            assert!(ATOMS.contains_key(code), "{code}");
        }
    }

    #[test]
    fn mass_and_length() {
        is(154.0, "[lb_av]", 69_853.224_98, "g");
        is(70.0, "kg", 70_000.0, "g");
        is(250.0, "mg", 0.25, "g");
        is(5.0, "ug", 5e-6, "g");
        is(16.0, "[oz_av]", 453.592_37, "g");
        equiv((70.0, "kg"), (154.324, "[lb_av]"), 1e-3);
        is(180.0, "cm", 1.8, "m");
        is(1.0, "[in_i]", 0.0254, "m");
        equiv((6.0, "[ft_i]"), (72.0, "[in_i]"), 1e-12);
        equiv((6.0, "[ft_i]"), (182.88, "cm"), 1e-12);
        equiv((1.0, "km"), (1e6, "mm"), 1e-12);
    }

    #[test]
    fn temperature() {
        is(37.0, "Cel", 310.15, "K");
        is(300.0, "K", 300.0, "K");
        is(32.0, "[degF]", 273.15, "K");
        equiv((37.5, "Cel"), (99.5, "[degF]"), 1e-9);
        equiv((-40.0, "Cel"), (-40.0, "[degF]"), 1e-9);
        equiv((37.0, "Cel{body}"), (310.15, "K"), 1e-12);
        // Affine units only alone (§11 ■4): no product, quotient, exponent or prefix.
        for code in [
            "Cel/s", "/Cel", "Cel2", "mCel", "kg.Cel", "[degF].s", "(Cel)/h",
        ] {
            assert_eq!(canonical(1.0, code), None, "{code}");
        }
    }

    #[test]
    fn pressure_and_energy() {
        is(1.0, "Pa", 1000.0, "g.m-1.s-2");
        equiv((120.0, "mm[Hg]"), (16.0, "kPa"), 1e-3);
        equiv((10.0, "cm[H2O]"), (0.980_665, "kPa"), 1e-9);
        equiv((1.0, "atm"), (1013.25, "hPa"), 1e-12);
        is(1.0, "J", 1000.0, "g.m2.s-2");
        equiv((1.0, "kcal"), (4.184, "kJ"), 1e-12);
        equiv((1.0, "[Cal]"), (4184.0, "J"), 1e-12);
    }

    #[test]
    fn volume_and_time() {
        is(1.0, "L", 1e-3, "m3");
        equiv((1.0, "L"), (1000.0, "mL"), 1e-12);
        equiv((1.0, "L"), (10.0, "dL"), 1e-12);
        is(90.0, "s", 90.0, "s");
        equiv((2.0, "h"), (120.0, "min"), 1e-12);
        equiv((1.0, "wk"), (7.0, "d"), 1e-12);
        equiv((1.0, "a"), (12.0, "mo"), 1e-12);
        is(1.0, "a", 31_557_600.0, "s");
    }

    #[test]
    fn rates_and_dimensionless() {
        is(72.0, "/min", 1.2, "s-1");
        equiv((72.0, "/min"), (72.0, "{beats}/min"), 1e-12);
        equiv((72.0, "{beat}/min"), (1.2, "Hz"), 1e-12);
        equiv((8000.0, "{steps}/d"), (8000.0, "/d"), 1e-12);
        equiv((1.0, "L/min"), (1000.0, "mL/min"), 1e-12);
        is(6.0, "L/min", 1e-4, "m3.s-1");
        is(98.0, "%", 0.98, "1");
        is(8000.0, "{steps}", 8000.0, "1");
        is(3.0, "1", 3.0, "1");
        is(2.0, "10*3", 2000.0, "1");
        is(1.0, "2+10", 1024.0, "1");
    }

    #[test]
    fn clinical_concentrations() {
        is(24.0, "kg/m2", 24_000.0, "g.m-2");
        // 100 mg/dL = 1 g/L = 1000 g/m3.
        is(100.0, "mg/dL", 1000.0, "g.m-3");
        equiv((100.0, "mg/dL"), (1.0, "g/L"), 1e-12);
        equiv((14.0, "g/dL"), (140.0, "g/L"), 1e-12);
        is(5.5, "mmol/L", 5.5, "mol.m-3");
        equiv((5.5, "mmol/L"), (5500.0, "umol/L"), 1e-12);
        // Glucose: mass and substance concentration are not inter-convertible.
        assert_ne!(canon(100.0, "mg/dL").1, canon(5.5, "mmol/L").1);
    }

    #[test]
    fn syntax() {
        // Left to right (§7 ■4): `g/m.s` is `g.s/m`; parentheses group (§10).
        equiv((1.0, "g/m.s"), (1.0, "g.s/m"), 1e-12);
        equiv((1.0, "g/m/s"), (1.0, "g/(m.s)"), 1e-12);
        equiv((1.0, "/s.g"), (1.0, "g/s"), 1e-12);
        equiv((1.0, "kg{total}"), (1000.0, "g"), 1e-12);
        equiv((1.0, "cm2"), (1e-4, "m2"), 1e-12);
        equiv((1.0, "s-1"), (1.0, "/s"), 1e-12);
        equiv((1.0, "m+2"), (1.0, "m2"), 1e-12);
        equiv((5.0, "10*9/L"), (5e12, "m-3"), 1e-12);
        is(1.0, "cd", 1.0, "cd");
        // The canonical code is itself a code with the same meaning.
        for code in [
            "mm[Hg]", "kg/m2", "mg/dL", "mmol/L", "/min", "%", "Cel", "kcal",
        ] {
            let (value, unit) = canon(3.0, code);
            assert_eq!(canon(value, &unit).1, unit, "{code}");
            assert!(close(canon(value, &unit).0, value, 1e-12), "{code}");
        }
    }

    #[test]
    fn unknown_units() {
        for code in [
            "furlong", "[iU]", "bpm", "KG", "kmin", "kh", "\u{b5}g", "[lb_i]",
        ] {
            assert_eq!(canonical(1.0, code), None, "{code}");
        }
        assert_eq!(canonical(f64::NAN, "kg"), None);
    }

    #[test]
    fn malformed_codes() {
        let bad = [
            "", "/", "//", ".", "m.", ".m", "kg/", "kg..m", "m^", "m^2", "m-", "-1", "{beats",
            "beats}", "{a{b}}", "{a b}", "[lb_av", "lb_av]", "[[g]]", "(kg", "kg)", "()",
            "(kg){x}", " kg", "kg m", "0", "0/s",
        ];
        // Exponents and factors out of range are malformed too, not a panic or infinity.
        let out_of_range = ["m99999999999", "10*999", "10*-999"];
        let overflow = ["m2147483647.m", "s-2147483648/s"];
        for code in bad.into_iter().chain(out_of_range).chain(overflow) {
            assert_eq!(canonical(1.0, code), None, "{code:?}");
        }
    }

    #[test]
    fn never_panics() {
        let alphabet: Vec<char> = "m/.{}[]()0-+gL*".chars().collect();
        let mut codes = vec![String::new()];
        for _ in 0..4 {
            codes = codes
                .iter()
                .flat_map(|c| alphabet.iter().map(move |a| format!("{c}{a}")))
                .collect();
            for code in &codes {
                let _ = canonical(1.0, code);
            }
        }
    }
}
