package semantic

import "testing"

// defaultGuard has the built-in synonyms only.
var defaultGuard = newGuard(nil)

func TestGuardRefusesWhatEmbeddingsBlur(t *testing.T) {
	for _, tc := range []struct{ a, b, reason string }{
		{"What is 15% of 200?", "What is 15% of 300?", refuseNumber},
		{"Book a table for two people", "Book a table for three people", refuseNumber},
		{"Is a 5 year warranty included?", "Is a five year warranty included?", ""},
		{"What's the second largest city in Spain?", "What's the largest city in Spain?", refuseNumber},
		{"Ship 1,000 units", "Ship 1000 units", ""},
		{"Upgrade to 5k users", "Upgrade to 5000 users", ""},
		{"Transfer $50 to savings", "Transfer €50 to savings", refuseUnit},
		{"Transfer $50 to savings", "Transfer 50 dollars to savings", ""},
		{"How long is a 10 km run?", "How long is a 10 mile run?", refuseUnit},
		{"Is the store open on Monday?", "Is the store open on Tuesday?", refuseDate},
		{"Can I cancel my order?", "Can't I cancel my order?", refuseNegation},
		{"Make a cake with sugar", "Make a cake without sugar", refuseNegation},
		{"Why does the app never sync?", "Why does the app always sync?", refuseNegation},
		{"Convert 100 USD to EUR", "Convert 100 EUR to USD", refuseUnit},
		{"Transfer $500 from checking to savings", "Transfer $500 from savings to checking", refuseOrder},
		{"Is a mile longer than a kilometer?", "Is a kilometer longer than a mile?", refuseOrder},
		{"How do I cancel my subscription?", "How do I cancel my order?", refuseSwap},
		{"How do I change my username?", "How can I change my user name?", ""},
		{"How do I reverse a list in Python?", "How do I sort a list in Python?", refuseSwap},
		{"convert usd to eur", "convert eur to usd", refuseOrder},
		{"What is the capital of France?", "What is the capital of Germany?", refuseEntity},
		{"What is the capital of France?", "what's the capital city of france", ""},
		{"Where is order A1234?", "Where is order A1243?", refuseEntity},
		{"How do I install Docker?", "How do I uninstall Docker?", refuseOpposite},
		{"Which plan is cheapest?", "Which plan is most expensive?", refuseOpposite},
		{"How do I reset my password?", "How can I reset my password?", ""},
		{"Translate hello into french", "Translate hello into german", refuseEntity},
		// Phrases read as one word: "on my phone" does not cancel "turn off".
		{"How do I turn off notifications on my phone?", "How do I turn on notifications on my phone?", refuseOpposite},
		{"How do I turn off notifications on my phone?", "How can I disable notifications on my phone?", ""},
		{"Why can't I log in?", "Why can't I log out?", refuseOpposite},
		// Synonyms and irregular verbs are one concept; a possessive names
		// the same entity.
		{"Who wrote Pride and Prejudice?", "Pride and Prejudice was written by whom?", ""},
		{"How do I lose weight fast?", "How can I lose weight quickly?", ""},
		{"What is the capital of Australia?", "What's Australia's capital city?", ""},
		{"What is the capital of Australia?", "What's Austria's capital city?", refuseEntity},
		// "update" is left out of the synonyms: of an app it means upgrade.
		{"How do I update my app?", "How do I change the theme of the app?", refuseSwap},
		// Emoji are one unknown token to the embedding model.
		{"Translate 🙂 into French", "Translate 😡 into French", refuseSymbol},
		{"🙂🙂", "你好世界", refuseSymbol},
		{"Is 2 < 3?", "Is 2 > 3?", refuseSymbol},
		{"What does 🙂 mean?", "What does 🙂 mean", ""},
	} {
		if got := defaultGuard.refusal(tc.a, tc.b); got != tc.reason {
			t.Errorf("guard(%q, %q) = %q, want %q", tc.a, tc.b, got, tc.reason)
		}
		if got := defaultGuard.refusal(tc.b, tc.a); (got == "") != (tc.reason == "") {
			t.Errorf("guard is not symmetric for %q / %q: %q", tc.b, tc.a, got)
		}
	}
}

func TestOperatorSynonyms(t *testing.T) {
	g := newGuard([][]string{{"thaw", "defrost"}, {"update", "change"}})
	for _, tc := range []struct{ a, b, reason string }{
		{"How do I thaw chicken?", "How do I defrost chicken?", ""},
		// "update" joins the built-in group of "change", "modify", "edit".
		{"How do I update my email address?", "How can I modify my email address?", ""},
		{"How do I thaw chicken?", "How do I marinate chicken?", refuseSwap},
	} {
		if got := g.refusal(tc.a, tc.b); got != tc.reason {
			t.Errorf("refusal(%q, %q) = %q, want %q", tc.a, tc.b, got, tc.reason)
		}
	}
	// Another cache's synonyms are not everyone's.
	if got := defaultGuard.refusal("How do I thaw chicken?", "How do I defrost chicken?"); got != refuseSwap {
		t.Errorf("the built-in guard took another guard's synonyms: refusal = %q", got)
	}
}

func FuzzGuard(f *testing.F) {
	f.Add("What is 15% of 200?", "What is fifteen percent of two hundred?")
	f.Add("Convert 100 USD to EUR", "twenty-five thousand and one")
	f.Fuzz(func(t *testing.T, a, b string) {
		if defaultGuard.refusal(a, a) != "" {
			t.Fatalf("guard refuses a prompt against itself: %q", a)
		}
		_ = defaultGuard.refusal(a, b)
	})
}
