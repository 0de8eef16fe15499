package semantic

import (
	"maps"
	"strings"
)

// The guard's word knowledge, kept apart from its rules (guard.go): which
// words frame a question, name something or mean the opposite of another,
// and how phrases, irregular verb forms and synonyms map to one concept.
//
// The synonyms decide which topic words count as "the same" when the guard
// looks for a substitution, so every entry claims that the two words never
// ask different things in support and chat traffic. Words with a second
// common sense ("book", "file", "charge", "train", "end", "update": of an
// address it is a change, of an app an upgrade) are left out, since
// merging them would turn a sibling question into a wrong answer.

// phrases are multi-word expressions the guard reads as one word. The
// word is also what opposites sees, so "turn on" against "turn off"
// is refused even when "on" appears elsewhere ("... on my phone").
var phrases = map[[2]string]string{
	{"turn", "on"}: "enable", {"switch", "on"}: "enable",
	{"turn", "off"}: "disable", {"switch", "off"}: "disable",
	{"log", "in"}: "login", {"sign", "in"}: "login",
	{"log", "out"}: "logout", {"sign", "out"}: "logout",
	{"opt", "out"}: "unsubscribe", {"opt", "in"}: "subscribe",
	{"sign", "up"}: "register",
}

// joinPhrases replaces each two-word phrase in toks with its word.
func joinPhrases(toks []token) []token {
	out := toks[:0:0]
	for i := 0; i < len(toks); i++ {
		if i+1 < len(toks) {
			if w, ok := phrases[[2]string{toks[i].lower, toks[i+1].lower}]; ok {
				out = append(out, token{text: w, lower: w, sentence: toks[i].sentence})
				i++
				continue
			}
		}
		out = append(out, toks[i])
	}
	return out
}

// irregular maps irregular verb forms to the verb, which stem cannot do:
// "Who wrote X?" and "X was written by whom?".
var irregular = func() map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(`write wrote written|build built|pay paid|send sent|buy bought
		get got gotten|give gave given|find found|lose lost|keep kept|bring brought|tell told|sell sold
		spend spent|begin began begun|choose chose chosen|drive drove driven|eat ate eaten|fly flew flown
		forget forgot forgotten|freeze froze frozen|know knew known|see saw seen|steal stole stolen
		throw threw thrown|wear wore worn|take took taken|break broke broken|speak spoke spoken
		fall fell fallen|hold held|mean meant|win won|sing sang sung|sleep slept|leave left|run ran
		do did done|go went gone|make made|say said|feel felt|meet met|teach taught|think thought`, "|") {
		forms := strings.Fields(line)
		for _, f := range forms[1:] {
			m[f] = forms[0]
		}
	}
	return m
}()

// synonyms groups words that ask the same thing; each group maps to the
// stem of its first word. Spelling variants and short forms are synonyms
// too.
var synonyms = func() map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(`often frequently|fast quick rapid rapidly speedy
		change modify edit alter|contact reach|information info details
		enable activate|disable deactivate|delete remove erase|restore recover retrieve
		fix repair|photo picture image pic photograph|car auto automobile vehicle
		plane flight airplane aeroplane|reserve reservation|recurring repeating recurrent
		error mistake|price cost|merge combine|undo revert|vacation holiday|cancel terminate
		ship deliver delivery|connect link|allow permit|large big|largest biggest|buy purchase
		method option|difference different differ|summary summarize summarise
		tire tyre|color colour|center centre|favorite favourite|organize organise|license licence
		dictionary dict|document doc|password passcode`, "|") {
		addSynonyms(m, strings.Fields(line))
	}
	return m
}()

// addSynonyms maps every word of group to one concept: that of the first
// word m already knows, else the stem of the first word. So a group an
// operator adds ("update change") joins a built-in one.
func addSynonyms(m map[string]string, group []string) {
	concept := stem(group[0])
	for _, w := range group {
		if c, ok := m[stem(w)]; ok {
			concept = c
			break
		}
	}
	for _, w := range group {
		m[stem(w)] = concept
	}
}

// guard decides whether a cached prompt answers a query (refusal, in
// guard.go). Its synonyms are the built-in ones plus the operator's.
type guard struct {
	synonyms map[string]string
}

// newGuard adds groups of synonyms, each of two or more lower-case words,
// to the built-in ones.
func newGuard(groups [][]string) *guard {
	g := &guard{synonyms: maps.Clone(synonyms)}
	for _, group := range groups {
		if len(group) > 0 {
			addSynonyms(g.synonyms, group)
		}
	}
	return g
}

// concept is the form under which a topic word is compared: its verb if
// it is an irregular form, else its stem, merged with its synonyms.
func (g *guard) concept(w string) string {
	if v, ok := irregular[w]; ok {
		w = v
	}
	s := stem(w)
	if c, ok := g.synonyms[s]; ok {
		return c
	}
	return s
}

// commonWords are capitalised at the start of a sentence or as titles
// without naming anything; they are never entities.
var commonWords = func() map[string]bool {
	m := map[string]bool{}
	for _, w := range strings.Fields(`i i'm i've i'd i'll a an the this that these those what how why when where who whom whose which
		can could would should will shall may might must do does did is are was were be been am have has had
		please tell give show explain describe list write make help find get let i'm hi hello hey thanks thank
		my your our their his her its we you they he she it there here if and or but so then also is what's how's
		ok okay yes no not in on at for to from of with by about as into after before during between over under
		is it's can't don't doesn't isn't won't what're are any some all each every one which who's`) {
		m[w] = true
	}
	return m
}()

// gazetteer names entities people write in lower case: languages,
// platforms and currency codes.
var gazetteer = func() map[string]bool {
	m := map[string]bool{}
	for _, w := range strings.Fields(`english french spanish german italian portuguese chinese mandarin japanese
		korean russian arabic hindi dutch swedish polish turkish greek hebrew
		python java javascript typescript golang rust kotlin swift ruby php perl scala haskell
		c++ c# sql mysql postgres postgresql mongodb redis kafka docker kubernetes linux windows macos
		android ios iphone ipad mac chrome firefox safari edge excel word powerpoint outlook
		usd eur gbp jpy inr cad aud chf cny btc eth`) {
		m[w] = true
	}
	return m
}()

// opposites lists words of opposite meaning that sentence encoders place
// close together. Each line is one pair of groups.
var opposites = func() map[string]int {
	pairs := [][2]string{
		{"buy buying bought purchase", "sell selling sold"}, {"increase increasing raise", "decrease decreasing reduce lower"},
		{"enable enabling enabled activate", "disable disabling disabled deactivate"},
		{"add adding", "remove removing delete deleting"}, {"upload uploading", "download downloading"},
		{"import importing", "export exporting"}, {"open opening", "close closing"}, {"start starting", "stop stopping"},
		{"before", "after"}, {"above", "below"}, {"max maximum", "min minimum"}, {"more", "less fewer"},
		{"most", "least"}, {"higher highest", "lower lowest"}, {"high", "low"}, {"up", "down"},
		{"login log-in signin", "logout log-out signout"}, {"subscribe", "unsubscribe"}, {"encrypt", "decrypt"},
		{"compress", "decompress"}, {"install", "uninstall"}, {"include", "exclude"}, {"accept", "reject decline"},
		{"allow", "deny block"}, {"win", "lose"}, {"hot", "cold"}, {"early earlier", "late later"},
		{"first", "last"}, {"on", "off"}, {"in", "out"}, {"cheap cheaper cheapest", "expensive pricier"}, {"fast faster fastest", "slow slower slowest"},
		{"largest biggest", "smallest"}, {"large big bigger", "small smaller"}, {"best", "worst"},
		{"pros advantages benefits", "cons disadvantages drawbacks"}, {"north", "south"}, {"east", "west"},
		{"left", "right"}, {"male men", "female women"}, {"push", "pull"}, {"send sending sent", "receive receiving received"},
		{"debit", "credit"}, {"deposit", "withdraw withdrawal"}, {"lend", "borrow"}, {"positive", "negative"},
		{"true", "false"}, {"encode", "decode"}, {"lock", "unlock"}, {"connect", "disconnect"},
		{"join", "leave"}, {"hire", "fire"}, {"export", "import"}, {"inbound incoming", "outbound outgoing"},
		{"ascending", "descending"}, {"upgrade", "downgrade"}, {"online", "offline"}, {"public", "private"},
		{"input", "output"}, {"internal", "external"}, {"minimum", "maximum"}, {"old older oldest", "new newer newest"},
		{"past", "future"}, {"long longer longest", "short shorter shortest"}, {"with", "without"},
		{"pay", "refund"}, {"weak", "strong"}, {"safe", "dangerous unsafe"}, {"legal", "illegal"},
	}
	m := map[string]int{}
	for i, p := range pairs {
		for _, w := range strings.Fields(p[0]) {
			m[w] = 2*i + 1
		}
		for _, w := range strings.Fields(p[1]) {
			m[w] = -(2*i + 1)
		}
	}
	return m
}()

// framingWords frame a request without saying what it is about; paraphrases
// swap them freely ("What are the steps to..." for "How do I...").
var framingWords = func() map[string]bool {
	m := map[string]bool{}
	for _, w := range strings.Fields(`way ways step steps process possible best easiest good tell give explain
		describe show need want know like would could should might can will just really please
		help able there something someone anything mean means meaning use using used usually usual
		way thing things kind get got getting make making made take taking let lets
		time again also still yet already ever even much many very quite too lot lots
		me us them him her it its i'd i'm i've you'd you're we're they're that's there's what's
		here where's why's who's when's how's did does doing done have having has had am were being been
		about above across again against along around because into onto than then through toward towards upon
		within while whether which whom whose etc other another such same own more most some any each few`) {
		m[w] = true
	}
	return m
}()
