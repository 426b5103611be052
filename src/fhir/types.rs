//! Identifiers parsed once at the boundary (STYLE.md habit 5): resource types and logical ids.

use std::fmt;

/// Every resource type of FHIR R4 (4.0.1), sorted, as in fhirbolt's generated `Resource` enum.
pub const RESOURCE_TYPES: &[&str] = &[
    "Account",
    "ActivityDefinition",
    "AdverseEvent",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "Binary",
    "BiologicallyDerivedProduct",
    "BodyStructure",
    "Bundle",
    "CapabilityStatement",
    "CarePlan",
    "CareTeam",
    "CatalogEntry",
    "ChargeItem",
    "ChargeItemDefinition",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "CodeSystem",
    "Communication",
    "CommunicationRequest",
    "CompartmentDefinition",
    "Composition",
    "ConceptMap",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceDefinition",
    "DeviceMetric",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "EffectEvidenceSynthesis",
    "Encounter",
    "Endpoint",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "EpisodeOfCare",
    "EventDefinition",
    "Evidence",
    "EvidenceVariable",
    "ExampleScenario",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GraphDefinition",
    "Group",
    "GuidanceResponse",
    "HealthcareService",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "ImplementationGuide",
    "InsurancePlan",
    "Invoice",
    "Library",
    "Linkage",
    "List",
    "Location",
    "Measure",
    "MeasureReport",
    "Media",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationKnowledge",
    "MedicationRequest",
    "MedicationStatement",
    "MedicinalProduct",
    "MedicinalProductAuthorization",
    "MedicinalProductContraindication",
    "MedicinalProductIndication",
    "MedicinalProductIngredient",
    "MedicinalProductInteraction",
    "MedicinalProductManufactured",
    "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical",
    "MedicinalProductUndesirableEffect",
    "MessageDefinition",
    "MessageHeader",
    "MolecularSequence",
    "NamingSystem",
    "NutritionOrder",
    "Observation",
    "ObservationDefinition",
    "OperationDefinition",
    "OperationOutcome",
    "Organization",
    "OrganizationAffiliation",
    "Parameters",
    "Patient",
    "PaymentNotice",
    "PaymentReconciliation",
    "Person",
    "PlanDefinition",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchDefinition",
    "ResearchElementDefinition",
    "ResearchStudy",
    "ResearchSubject",
    "RiskAssessment",
    "RiskEvidenceSynthesis",
    "Schedule",
    "SearchParameter",
    "ServiceRequest",
    "Slot",
    "Specimen",
    "SpecimenDefinition",
    "StructureDefinition",
    "StructureMap",
    "Subscription",
    "Substance",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
    "SubstanceSpecification",
    "SupplyDelivery",
    "SupplyRequest",
    "Task",
    "TerminologyCapabilities",
    "TestReport",
    "TestScript",
    "ValueSet",
    "VerificationResult",
    "VisionPrescription",
];

/// A FHIR R4 resource type name known to this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType(&'static str);

impl ResourceType {
    pub fn parse(s: &str) -> Option<Self> {
        RESOURCE_TYPES
            .binary_search(&s)
            .ok()
            .map(|i| ResourceType(RESOURCE_TYPES[i]))
    }

    pub fn as_str(&self) -> &'static str {
        self.0
    }

    pub fn all() -> impl Iterator<Item = ResourceType> {
        RESOURCE_TYPES.iter().map(|s| ResourceType(s))
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// A logical id: `[A-Za-z0-9\-\.]{1,64}` (https://hl7.org/fhir/R4/datatypes.html#id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceId(String);

impl ResourceId {
    pub fn parse(s: &str) -> Option<Self> {
        Self::is_valid(s).then(|| ResourceId(s.to_owned()))
    }

    /// Whether `s` has the lexical form of an id.
    pub fn is_valid(s: &str) -> bool {
        (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    }

    /// A fresh server-assigned id. UUIDs are never handed out twice, so ids are never reused.
    /// Version 7 (RFC 9562 §5.7) starts with the time, so the ids of new resources sort after
    /// the older ones: each index keyed by id grows at its right edge instead of at random
    /// pages, which keeps the pages a write touches few and in cache as the tables grow.
    pub fn generate() -> Self {
        ResourceId(uuid::Uuid::now_v7().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The target of a literal reference: `Type/id`, `Type/id/_history/v`, or an absolute URL ending
/// in one of those (https://hl7.org/fhir/R4/references.html#literal).
pub fn literal_reference(url: &str) -> Option<(ResourceType, &str)> {
    let path = url.split_once("/_history/").map_or(url, |(p, _)| p);
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let mut segments = path.rsplit('/');
    let id = segments.next()?;
    let ty = ResourceType::parse(segments.next()?)?;
    ResourceId::is_valid(id).then_some((ty, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_types_are_sorted_and_complete() {
        assert_eq!(RESOURCE_TYPES.len(), 146);
        assert!(RESOURCE_TYPES.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            ResourceType::parse("Observation").map(|t| t.as_str()),
            Some("Observation")
        );
        assert!(ResourceType::parse("observation").is_none());
        assert!(ResourceType::parse("DomainResource").is_none());
    }

    #[test]
    fn ids() {
        assert!(ResourceId::parse("abc-1.2").is_some());
        assert!(ResourceId::parse("").is_none());
        assert!(ResourceId::parse("a b").is_none());
        assert!(ResourceId::parse("a_b").is_none());
        assert!(ResourceId::parse(&"a".repeat(64)).is_some());
        assert!(ResourceId::parse(&"a".repeat(65)).is_none());
    }

    #[test]
    fn literal_references() {
        let obs = ResourceType::parse("Observation");
        assert_eq!(literal_reference("Observation/1"), obs.map(|t| (t, "1")));
        assert_eq!(
            literal_reference("http://x/fhir/Observation/1/_history/2"),
            obs.map(|t| (t, "1"))
        );
        assert_eq!(literal_reference("Spaceship/1"), None);
        assert_eq!(literal_reference("Observation/a_b"), None);
        assert_eq!(
            literal_reference("urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"),
            None
        );
    }
}

/// Why a resource cannot be accepted by a room that reads it for its own use (a Subscription,
/// a billing catalog entry): the element at fault and what is wrong, answered as a 422 issue
/// at that element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub expression: String,
    pub message: String,
}

impl Invalid {
    /// A problem at `ty.element`.
    pub fn new(ty: &str, element: &str, message: impl Into<String>) -> Invalid {
        Invalid {
            expression: format!("{ty}.{element}"),
            message: message.into(),
        }
    }

    pub fn issue(self) -> crate::http::error::Issue {
        crate::http::error::Issue::error("value", self.message).at(self.expression)
    }
}
