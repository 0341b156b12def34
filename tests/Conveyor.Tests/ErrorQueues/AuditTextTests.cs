using Conveyor.Api.ErrorQueues;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>How broker text is written into the audit trail: pure logic, no servers.</summary>
public sealed class AuditTextTests
{
    [Theory]
    [InlineData("\u0000x", @"\u0000x")]
    [InlineData("tab\there\r\n", @"tab\u0009here\u000D\u000A")]
    [InlineData("del\u007f next\u0085", @"del\u007F next\u0085")]
    public void Control_characters_become_visible_escapes(string text, string expected)
    {
        Assert.True(AuditText.NeedsEscaping(text));
        Assert.Equal(expected, AuditText.Escape(text));
    }

    [Fact]
    public void Unpaired_surrogates_which_have_no_UTF8_form_become_visible_escapes()
    {
        // Not [InlineData]: an attribute's string argument cannot hold an unpaired surrogate.
        var text = "lone \ud800 high, lone \udc00 low, ends high \ud83d";

        Assert.True(AuditText.NeedsEscaping(text));
        Assert.Equal(@"lone \uD800 high, lone \uDC00 low, ends high \uD83D", AuditText.Escape(text));
    }

    [Theory]
    [InlineData("0b5e6f2c-1d7a-4c1e-9d55-3c8b2f0e7a11")]
    [InlineData("order #7 – zahlung für 🧾 (no control characters)")]
    [InlineData(@"already \u0000 escaped")]
    [InlineData("")]
    public void Other_text_is_kept_as_it_came(string text)
    {
        Assert.False(AuditText.NeedsEscaping(text));
        Assert.Same(text, AuditText.Escape(text));
    }

    [Fact]
    public void Clipping_never_leaves_half_a_surrogate_pair()
    {
        Assert.Equal("ab", AuditText.Clip("ab🧾", 3));
        Assert.Equal("ab🧾", AuditText.Clip("ab🧾c", 4));
        Assert.Equal("abc", AuditText.Clip("abc", 10));
    }
}
