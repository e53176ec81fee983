//! ISO code lists: currencies (ISO 4217, with their minor-unit exponents), countries
//! (ISO 3166-1 alpha-2) and languages (ISO 639-1). Fixed tables, no I/O.

/// Active ISO 4217 currency codes with 2 minor-unit digits are the default; the others are
/// listed with their exponent.
const CURRENCIES: &str = "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD \
BTN BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP \
GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD \
KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR \
NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP \
SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF XCD XCG XOF XPF \
YER ZAR ZMW ZWG";

const EXPONENT_0: &str = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF";
const EXPONENT_3: &str = "BHD IQD JOD KWD LYD OMR TND";
const EXPONENT_4: &str = "CLF UYW";

const COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO \
BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER \
ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN \
IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH \
MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN \
PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ \
TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

const LANGUAGES: &str = "aa ab ae af ak am an ar as av ay az ba be bg bi bm bn bo br bs ca ce ch co cr cs cu cv \
cy da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig \
ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn \
mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk \
sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za \
zh zu";

fn listed(list: &str, code: &str) -> bool {
    code.len() >= 2 && list.split_ascii_whitespace().any(|c| c == code)
}

/// The number of minor-unit digits of an active ISO 4217 currency (`EUR` → 2, `JPY` → 0,
/// `KWD` → 3), or `None` if the code is not one.
pub fn currency_exponent(code: &str) -> Option<u32> {
    if code.len() != 3 || !listed(CURRENCIES, code) {
        return None;
    }
    Some(if listed(EXPONENT_0, code) {
        0
    } else if listed(EXPONENT_3, code) {
        3
    } else if listed(EXPONENT_4, code) {
        4
    } else {
        2
    })
}

/// Whether `code` is an ISO 3166-1 alpha-2 country code (upper case).
pub fn is_country(code: &str) -> bool {
    code.len() == 2 && listed(COUNTRIES, code)
}

/// Whether `code` is an ISO 639-1 language code (lower case).
pub fn is_language(code: &str) -> bool {
    code.len() == 2 && listed(LANGUAGES, code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponents() {
        assert_eq!(currency_exponent("EUR"), Some(2));
        assert_eq!(currency_exponent("USD"), Some(2));
        assert_eq!(currency_exponent("JPY"), Some(0));
        assert_eq!(currency_exponent("KWD"), Some(3));
        assert_eq!(currency_exponent("CLF"), Some(4));
        assert_eq!(currency_exponent("eur"), None);
        assert_eq!(currency_exponent("XXX"), None);
        assert_eq!(currency_exponent("EU"), None);
        assert_eq!(currency_exponent("EUR USD"), None);
    }

    #[test]
    fn lists_are_well_formed() {
        for (list, len, upper) in [(CURRENCIES, 3, true), (COUNTRIES, 2, true), (LANGUAGES, 2, false)] {
            let codes: Vec<&str> = list.split_ascii_whitespace().collect();
            let mut sorted = codes.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(codes, sorted, "sorted and unique");
            for c in codes {
                assert_eq!(c.len(), len, "{c}");
                assert!(c.chars().all(|ch| if upper {
                    ch.is_ascii_uppercase()
                } else {
                    ch.is_ascii_lowercase()
                }));
            }
        }
        for list in [EXPONENT_0, EXPONENT_3, EXPONENT_4] {
            assert!(list.split_ascii_whitespace().all(|c| listed(CURRENCIES, c)), "{list}");
        }
        assert_eq!(COUNTRIES.split_ascii_whitespace().count(), 249);
        assert_eq!(LANGUAGES.split_ascii_whitespace().count(), 183);
    }

    #[test]
    fn countries_and_languages() {
        assert!(is_country("DE") && is_country("US") && is_country("TR"));
        assert!(!is_country("de") && !is_country("XX") && !is_country("UK"));
        assert!(is_language("en") && is_language("tr") && !is_language("EN") && !is_language("xx"));
    }
}
