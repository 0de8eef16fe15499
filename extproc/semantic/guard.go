package semantic

import (
	"slices"
	"strconv"
	"strings"
	"unicode"
)

// Guard refusal reasons, used as the "reason" label of the refusal metric.
const (
	refuseNumber   = "number"
	refuseUnit     = "unit"
	refuseDate     = "date"
	refuseNegation = "negation"
	refuseEntity   = "entity"
	refuseOrder    = "order"
	refuseOpposite = "opposite"
	refuseSwap     = "substitution"
	refuseSymbol   = "symbol"
)

// refusal compares a query with a cached prompt whose embedding scored
// above the threshold and names the reason they may still ask different
// things, or returns "" when nothing they say differs in a way a sentence
// embedding is known to blur: numbers (digits or words, ordinals), units and
// currencies, dates, negation, named entities and codes, the order of those
// anchors ("USD to EUR" against "EUR to USD"), and words of opposite meaning.
// It errs on the side of refusing: a refusal costs one upstream call, a
// wrong hit serves the wrong answer.
func (g *guard) refusal(query, cached string) string {
	a, b := g.analyze(query), g.analyze(cached)
	switch {
	case !slices.Equal(a.numbers, b.numbers):
		return refuseNumber
	case !slices.Equal(a.units, b.units):
		return refuseUnit
	case !slices.Equal(a.dates, b.dates):
		return refuseDate
	case !slices.Equal(a.symbols, b.symbols):
		return refuseSymbol
	case a.negations != b.negations:
		return refuseNegation
	case !entitiesShared(a, b) || !entitiesShared(b, a):
		return refuseEntity
	case !sameAnchorOrder(a, b):
		return refuseOrder
	case opposed(a, b):
		return refuseOpposite
	case swapped(a, b):
		return refuseSwap
	case reversed(a, b) || reversed(b, a):
		return refuseOrder
	}
	return ""
}

// features is what the guard extracts from one prompt.
type features struct {
	words     map[string]bool    // every word, lower-cased
	content   map[string]bool    // stems of the words that carry the topic
	compounds []string           // stems of adjacent word pairs written as one
	relations map[[3]string]bool // "checking to savings": {checking, to, saving}
	numbers   []string           // canonical values, sorted
	units     []string           // canonical units and currencies, sorted, unique
	dates     []string           // months, weekdays, relative days, sorted, unique
	// symbols are emoji and other symbol characters, sorted: the embedding
	// model has most of them as one unknown token, so "translate 🙂" and
	// "translate 😡" embed alike.
	symbols   []string
	negations int
	entities  []string // lower-cased, unique, in order of appearance
	anchors   []string // numbers and entities in order of appearance, unique
}

type token struct {
	text     string // as written
	lower    string
	number   bool // digits, possibly with separators and a decimal point
	sentence bool // first word of a sentence
}

// currencySigns are units: compared with the amounts they go with.
const currencySigns = "$€£¥₹"

// tokenize splits text into words, numbers and currency or percent signs.
// A number glued to letters ("5kg", "10pm", "3rd") becomes two tokens.
func tokenize(text string) []token {
	var toks []token
	rs := []rune(text)
	sentence := true
	emit := func(s string, number bool) {
		toks = append(toks, token{text: s, lower: strings.ToLower(s), number: number, sentence: sentence})
		sentence = false
	}
	for i := 0; i < len(rs); {
		r := rs[i]
		switch {
		case unicode.IsDigit(r):
			j := i + 1
			for j < len(rs) && (unicode.IsDigit(rs[j]) || (rs[j] == '.' || rs[j] == ',') && j+1 < len(rs) && unicode.IsDigit(rs[j+1])) {
				j++
			}
			// a code such as A12B or 4k-UHD is kept whole below; here the
			// digits start the token, so letters after them are a unit
			emit(string(rs[i:j]), true)
			i = j
		case unicode.IsLetter(r):
			j := i + 1
			for j < len(rs) && (unicode.IsLetter(rs[j]) || unicode.IsDigit(rs[j]) || (rs[j] == '\'' || rs[j] == '’') && j+1 < len(rs) && unicode.IsLetter(rs[j+1])) {
				j++
			}
			emit(strings.ReplaceAll(string(rs[i:j]), "’", "'"), false)
			i = j
		case strings.ContainsRune(currencySigns+"%", r):
			emit(string(r), false)
			i++
		case r == '.' || r == '?' || r == '!' || r == '\n':
			sentence = true
			i++
		default:
			i++
		}
	}
	return toks
}

func (g *guard) analyze(text string) features {
	toks := joinPhrases(tokenize(text))
	f := features{words: make(map[string]bool, len(toks)), content: map[string]bool{}, relations: g.relations(toks)}
	for i, t := range toks {
		f.words[t.lower] = true
		// "Australia's capital" mentions Australia.
		f.words[strings.TrimSuffix(t.lower, "'s")] = true
		if isTopicWord(t) {
			f.content[g.concept(t.lower)] = true
		}
		if i > 0 && !t.number && !toks[i-1].number {
			// "user name" also spells "username"
			f.compounds = append(f.compounds, stem(toks[i-1].lower+t.lower))
		}
	}
	units := map[string]bool{}
	dates := map[string]bool{}
	seenEntity := map[string]bool{}
	seenAnchor := map[string]bool{}
	anchor := func(s string) {
		if !seenAnchor[s] {
			seenAnchor[s] = true
			f.anchors = append(f.anchors, s)
		}
	}
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		if t.number {
			v := canonicalNumber(t.text)
			// "5k" is five thousand, not five of a unit k
			if i+1 < len(toks) && (toks[i+1].lower == "k" || toks[i+1].lower == "m" && i+2 < len(toks) && unitOf(toks[i+2].lower) != "") {
				v = scaleNumber(v, map[string]float64{"k": 1e3, "m": 1e6}[toks[i+1].lower])
				i++
			}
			f.numbers = append(f.numbers, v)
			anchor("#" + v)
			continue
		}
		if v, n, ok := writtenNumber(toks, i); ok {
			f.numbers = append(f.numbers, v)
			anchor("#" + v)
			i += n - 1
			continue
		}
		if u := unitOf(t.lower); u != "" {
			if nextToNumber(toks, i) {
				units[u] = true
			} else {
				anchor("unit:" + u) // "a mile longer than a kilometer"
			}
		}
		if d := dateWord(toks, i); d != "" {
			dates[d] = true
		}
		if isNegation(t.lower) {
			f.negations++
		}
		// "Australia's" names Australia.
		name := strings.TrimSuffix(t.lower, "'s")
		if isEntity(t) && !seenEntity[name] {
			seenEntity[name] = true
			f.entities = append(f.entities, name)
		}
		if seenEntity[name] {
			anchor(name)
		}
	}
	for _, r := range text {
		if unicode.IsSymbol(r) && !strings.ContainsRune(currencySigns, r) {
			f.symbols = append(f.symbols, string(r))
		}
	}
	slices.Sort(f.symbols)
	slices.Sort(f.numbers)
	f.units = sortedKeys(units)
	f.dates = sortedKeys(dates)
	return f
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// entitiesShared reports whether every entity of a is mentioned by b, in
// any case: "Paris" and "paris" are the same place.
func entitiesShared(a, b features) bool {
	for _, e := range a.entities {
		if !b.words[e] {
			return false
		}
	}
	return true
}

// sameAnchorOrder compares the order of the numbers and entities both
// prompts mention.
func sameAnchorOrder(a, b features) bool {
	inB := make(map[string]bool, len(b.anchors))
	for _, x := range b.anchors {
		inB[x] = true
	}
	var sa, sb []string
	for _, x := range a.anchors {
		if inB[x] {
			sa = append(sa, x)
		}
	}
	inA := make(map[string]bool, len(sa))
	for _, x := range sa {
		inA[x] = true
	}
	for _, x := range b.anchors {
		if inA[x] {
			sb = append(sb, x)
		}
	}
	return slices.Equal(sa, sb)
}

func canonicalNumber(s string) string {
	s = strings.ReplaceAll(s, ",", "")
	f, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return s
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

func scaleNumber(v string, by float64) string {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || by == 0 {
		return v
	}
	return strconv.FormatFloat(f*by, 'g', -1, 64)
}

var (
	smallNumbers = map[string]float64{
		"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
		"eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
		"fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
		"nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
		"seventy": 70, "eighty": 80, "ninety": 90, "dozen": 12, "half": 0.5, "quarter": 0.25,
		"twice": 2, "double": 2, "triple": 3, "once": 1, "single": 1, "couple": 2, "pair": 2,
		"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
		"eighth": 8, "ninth": 9, "tenth": 10, "hundredth": 100,
	}
	scaleWords = map[string]float64{"hundred": 100, "thousand": 1e3, "million": 1e6, "billion": 1e9, "trillion": 1e12}
)

// countsAsNumber filters number words that are more often something else:
// "one" as a pronoun ("which one"), "second" as a duration after a number
// ("30 second timeout").
func countsAsNumber(toks []token, i int) bool {
	switch toks[i].lower {
	case "one", "single", "once", "couple", "pair", "double":
		if i+1 >= len(toks) {
			return false
		}
		next := toks[i+1].lower
		_, scale := scaleWords[next]
		_, num := smallNumbers[next]
		return scale || num || unitOf(next) != "" || next == "of" && toks[i].lower == "couple"
	case "second":
		return i == 0 || !toks[i-1].number
	}
	return true
}

// writtenNumber reads a number spelled in words at the start of toks
// ("twenty five", "two hundred", "a dozen" is left to "dozen") and returns
// its canonical value and how many tokens it spans. "second" counts as 2
// because "the second largest" and "the largest" ask different things.
func writtenNumber(all []token, start int) (string, int, bool) {
	toks := all[start:]
	var total, cur float64
	n := 0
	for n < len(toks) {
		w := toks[n].lower
		if v, ok := smallNumbers[w]; ok {
			if !countsAsNumber(all, start+n) {
				break
			}
			cur += v
			n++
			continue
		}
		if v, ok := scaleWords[w]; ok && n > 0 {
			if cur == 0 {
				cur = 1
			}
			cur *= v
			if v >= 1e3 {
				total += cur
				cur = 0
			}
			n++
			continue
		}
		if w == "and" && n > 0 && n+1 < len(toks) {
			if _, ok := smallNumbers[toks[n+1].lower]; ok {
				n++
				continue
			}
		}
		break
	}
	if n == 0 {
		if v, ok := scaleWords[toks[0].lower]; ok {
			return strconv.FormatFloat(v, 'g', -1, 64), 1, true
		}
		return "", 0, false
	}
	return strconv.FormatFloat(total+cur, 'g', -1, 64), n, true
}

// units maps the spellings of a unit or currency to one name, so "$5" and
// "5 dollars" agree while "5 USD" and "5 EUR" do not.
var units = func() map[string]string {
	groups := map[string][]string{
		"usd": {"$", "usd", "dollar", "dollars", "bucks"}, "eur": {"€", "eur", "euro", "euros"},
		"gbp": {"£", "gbp", "pound", "pounds", "quid", "sterling"}, "jpy": {"¥", "jpy", "yen"},
		"inr": {"₹", "inr", "rupee", "rupees"}, "cad": {"cad"}, "aud": {"aud"}, "chf": {"chf", "franc", "francs"},
		"cny": {"cny", "yuan", "rmb"}, "btc": {"btc", "bitcoin", "bitcoins"}, "eth": {"eth", "ether"},
		"percent": {"%", "percent", "pct", "percentage"},
		"km":      {"km", "kms", "kilometer", "kilometers", "kilometre", "kilometres"},
		"mile":    {"mi", "mile", "miles"}, "m": {"meter", "meters", "metre", "metres"},
		"cm": {"cm", "centimeter", "centimeters", "centimetre", "centimetres"}, "mm": {"mm", "millimeter", "millimeters"},
		"inch": {"inch", "inches"}, "ft": {"ft", "foot", "feet"},
		"kg": {"kg", "kgs", "kilo", "kilos", "kilogram", "kilograms"}, "g": {"gram", "grams"},
		"lb": {"lb", "lbs"}, "oz": {"oz", "ounce", "ounces"}, "l": {"liter", "liters", "litre", "litres"},
		"ml": {"ml", "milliliter", "milliliters"}, "gal": {"gallon", "gallons"},
		"kb": {"kb", "kilobyte", "kilobytes"}, "mb": {"mb", "megabyte", "megabytes"},
		"gb": {"gb", "gig", "gigs", "gigabyte", "gigabytes"}, "tb": {"tb", "terabyte", "terabytes"},
		"second": {"sec", "secs", "seconds"}, "minute": {"min", "mins", "minute", "minutes"},
		"hour": {"h", "hr", "hrs", "hour", "hours"}, "day": {"day", "days"}, "week": {"week", "weeks"},
		"month": {"month", "months"}, "year": {"yr", "yrs", "year", "years"},
		"am": {"am", "a.m"}, "pm": {"pm", "p.m"}, "celsius": {"c", "°c", "celsius", "centigrade"},
		"fahrenheit": {"f", "°f", "fahrenheit"}, "mph": {"mph"}, "kph": {"kph", "km/h"},
		"ghz": {"ghz"}, "mhz": {"mhz"}, "watt": {"w", "watt", "watts"}, "kwh": {"kwh"}, "volt": {"v", "volt", "volts"},
	}
	m := map[string]string{}
	for canon, spellings := range groups {
		for _, s := range spellings {
			m[s] = canon
		}
	}
	return m
}()

// nextToNumber reports whether toks[i] is a unit of a quantity: "5 days",
// "$ 5", "100 USD". "What day is payday?" names no quantity.
func nextToNumber(toks []token, i int) bool {
	isNum := func(j int) bool {
		if j < 0 || j >= len(toks) {
			return false
		}
		if toks[j].number {
			return true
		}
		_, ok := smallNumbers[toks[j].lower]
		_, scale := scaleWords[toks[j].lower]
		return ok || scale
	}
	return isNum(i-1) || isNum(i+1) || isNum(i-2) && toks[i-1].lower == "per"
}

// singleLetterUnits are units only when they follow a number ("5 m", "20 c");
// elsewhere they are ordinary words or initials.
var singleLetterUnits = map[string]bool{"h": true, "c": true, "f": true, "w": true, "v": true}

func unitOf(w string) string {
	if singleLetterUnits[w] {
		return ""
	}
	return units[w]
}

var months = map[string]string{
	"january": "jan", "jan": "jan", "february": "feb", "feb": "feb", "march": "mar", "mar": "mar",
	"april": "apr", "apr": "apr", "may": "may", "june": "jun", "jun": "jun", "july": "jul", "jul": "jul",
	"august": "aug", "aug": "aug", "september": "sep", "sept": "sep", "sep": "sep", "october": "oct",
	"oct": "oct", "november": "nov", "nov": "nov", "december": "dec", "dec": "dec",
	"monday": "mon", "tuesday": "tue", "wednesday": "wed", "thursday": "thu", "friday": "fri",
	"saturday": "sat", "sunday": "sun", "today": "today", "tonight": "today", "tomorrow": "tomorrow",
	"yesterday": "yesterday", "weekend": "weekend", "weekday": "weekday", "morning": "morning",
	"afternoon": "afternoon", "evening": "evening", "night": "night", "spring": "spring",
	"summer": "summer", "autumn": "autumn", "fall": "autumn", "winter": "winter",
}

// dateWord returns the canonical date word at toks[i]. "May" and "march"
// and "fall" are also ordinary words, so they count only next to a number.
func dateWord(toks []token, i int) string {
	d := months[toks[i].lower]
	switch toks[i].lower {
	case "may", "march", "mar", "fall", "sat", "sun", "jan":
		near := (i > 0 && toks[i-1].number) || (i+1 < len(toks) && toks[i+1].number)
		if !near {
			return ""
		}
	}
	return d
}

func isNegation(w string) bool {
	switch w {
	case "not", "no", "never", "without", "none", "nobody", "nothing", "nowhere", "neither", "nor",
		"cannot", "cant", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "wont",
		"wouldnt", "shouldnt", "couldnt", "hasnt", "havent", "hadnt", "unable", "except", "excluding":
		return true
	}
	return strings.HasSuffix(w, "n't")
}

// isEntity reports whether a word names something: a capitalised word
// inside a sentence, an all-caps word or code, a word mixing letters and
// digits, or a known name.
func isEntity(t token) bool {
	if gazetteer[t.lower] {
		return true
	}
	if commonWords[t.lower] || len([]rune(t.text)) < 2 {
		return false
	}
	hasDigit, hasUpper, allUpper := false, false, true
	for i, r := range t.text {
		switch {
		case unicode.IsDigit(r):
			hasDigit = true
		case unicode.IsUpper(r):
			if i > 0 {
				hasUpper = true
			}
		case unicode.IsLetter(r):
			allUpper = false
		}
	}
	if hasDigit || hasUpper || allUpper {
		return true // GPT4, iPhone, SKU-like codes, USD, NASA
	}
	return !t.sentence && unicode.IsUpper([]rune(t.text)[0])
}

// opposed reports whether one prompt uses a word whose opposite the other
// uses, and neither uses both.
func opposed(a, b features) bool {
	sideA := map[int]bool{}
	for w := range a.words {
		if s, ok := opposites[w]; ok {
			sideA[s] = true
		}
	}
	for w := range b.words {
		s, ok := opposites[w]
		if !ok || !sideA[-s] || sideA[s] {
			continue
		}
		if bothSides(b, s) {
			continue
		}
		return true
	}
	return false
}

func bothSides(f features, s int) bool {
	for w := range f.words {
		if opposites[w] == -s {
			return true
		}
	}
	return false
}

// swapped reports whether each prompt has a topic word the other lacks:
// "reset my password" against "reset my router", "cancel my subscription"
// against "cancel my order". A sentence encoder places such siblings as
// close as true paraphrases, and cannot tell them from synonyms, so a
// substitution is refused; words added on one side only (a paraphrase that
// says more) are let through.
func swapped(a, b features) bool {
	return hasMissing(a.content, b) && hasMissing(b.content, a)
}

// isTopicWord reports whether t says what a prompt is about, as opposed
// to framing it ("how do I", "what is the best way to").
func isTopicWord(t token) bool {
	if t.number || len(t.lower) < 3 || framingWords[t.lower] || isNegation(t.lower) {
		return false
	}
	return !commonWords[t.lower] || t.lower == "list" // "a list" is a topic; "List the..." frames
}

// directional are the words whose two sides cannot be swapped without
// changing the question ("from checking to savings", "longer than a mile").
var directional = map[string]bool{"to": true, "from": true, "than": true, "into": true, "vs": true, "versus": true}

// relations pairs each directional word with the nearest topic word (or
// number) on each side, within three words.
func (g *guard) relations(toks []token) map[[3]string]bool {
	rel := map[[3]string]bool{}
	topic := func(t token) (string, bool) {
		if t.number {
			return "#" + canonicalNumber(t.text), true
		}
		if isTopicWord(t) || isEntity(t) {
			return g.concept(t.lower), true
		}
		return "", false
	}
	for i, t := range toks {
		if !directional[t.lower] {
			continue
		}
		var left, right string
		for j := i - 1; j >= max(0, i-3) && left == ""; j-- {
			left, _ = topic(toks[j])
		}
		for j := i + 1; j < min(len(toks), i+4) && right == ""; j++ {
			right, _ = topic(toks[j])
		}
		if left != "" && right != "" && left != right {
			rel[[3]string{left, t.lower, right}] = true
		}
	}
	return rel
}

// reversed reports whether b states one of a's relations the other way
// round, and not also a's way.
func reversed(a, b features) bool {
	for r := range a.relations {
		if b.relations[[3]string{r[2], r[1], r[0]}] && !b.relations[r] {
			return true
		}
	}
	return false
}

// hasMissing reports whether a topic word of from is not in f, as a word
// or as two adjacent words written together.
func hasMissing(from map[string]bool, f features) bool {
	for w := range from {
		if !f.content[w] && !slices.Contains(f.compounds, w) {
			return true
		}
	}
	return false
}

// stem strips the common English inflections so that "orders" and
// "order", "shipping" and "ship", "cancelled" and "cancel" agree.
func stem(w string) string {
	w = strings.TrimSuffix(w, "'s")
	for _, suf := range []string{"ing", "est", "ed", "es", "s", "ly"} {
		if len(w) > len(suf)+3 && strings.HasSuffix(w, suf) {
			w = strings.TrimSuffix(w, suf)
			break
		}
	}
	if n := len(w); n > 3 && w[n-1] == w[n-2] && !strings.ContainsRune("aeiouls", rune(w[n-1])) {
		w = w[:n-1] // shipp -> ship, cancell stays cancel via "l"
	}
	return strings.TrimSuffix(w, "e")
}
